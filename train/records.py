"""What a run leaves in its workdir for the benchmarks to read.

- `config.json`: the resolved config.
- `run.json`: config, git commit, package versions, devices, host, start and end time.
- `epochs.jsonl`: one row per epoch (deterministic metrics, then measured resources).
- `steps.jsonl`: one row every `log_every` steps: the LR-change log the seed asks for.
- `tb/`: TensorBoard event files with the same scalars (tensorboardX: no TensorFlow needed).

Non-finite floats are written as JSON `null` (e.g. `lr_scale` of a strategy without gradvar).
"""

import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import resource
import socket
import subprocess
from typing import Any

import jax

PACKAGES = ("jax", "jaxlib", "optax", "flax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "tokenizers", "numpy", "gradvar-optax")


def _clean(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def git_commit() -> dict[str, Any]:
  here = pathlib.Path(__file__).resolve().parent
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                            text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=here, capture_output=True, text=True).stdout.strip())
  except (OSError, subprocess.CalledProcessError):
    return {"commit": None, "dirty": None}
  return {"commit": commit, "dirty": dirty}


def versions() -> dict[str, str | None]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def hardware(devices=None) -> dict[str, Any]:
  """The machine and software that a run's or a benchmark's figures belong to."""
  devices = jax.local_devices() if devices is None else devices
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {"device_kind": devices[0].device_kind, "platform": devices[0].platform,
          "device_count": len(devices), "process_count": jax.process_count(),
          "host": socket.gethostname(), "cpu": cpu, "cpu_cores": os.cpu_count(),
          "cpus_usable": usable, "jax": jax.__version__, "python": platform.python_version(),
          # Other processes slow the figures down; this says how busy the machine was.
          "load_avg_1m": round(os.getloadavg()[0], 2)}


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_memory_mb(devices) -> float | None:
  """Peak device memory of the first device, where the backend reports it (GPU/TPU)."""
  try:
    stats = devices[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends raise various errors
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Recorder:
  """Writes the run's records; only the main process writes (`enabled`)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(workdir / "tb"))

  def write_json(self, name: str, payload: dict) -> None:
    if self.enabled:
      path = self.workdir / name
      tmp = path.with_suffix(".tmp")
      tmp.write_text(json.dumps(_clean(payload), indent=2, sort_keys=True) + "\n")
      tmp.replace(path)

  def _append(self, name: str, rows: list[dict]) -> None:
    if self.enabled and rows:
      with open(self.workdir / name, "a") as f:
        for row in rows:
          f.write(json.dumps(_clean(row), sort_keys=True) + "\n")

  def steps(self, rows: list[dict]) -> None:
    self._append("steps.jsonl", rows)
    if self._tb is not None:
      for row in rows:
        for key, value in row.items():
          if key not in ("step", "epoch") and value is not None and math.isfinite(value):
            self._tb.add_scalar(f"step/{key}", value, row["step"])

  def epoch(self, row: dict) -> None:
    self._append("epochs.jsonl", [row])
    if self._tb is not None:
      for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(f"epoch/{key}", value, row["epoch"])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

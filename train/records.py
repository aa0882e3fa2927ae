"""What a run leaves in its workdir for the benchmarks to read.

- `config.json`: the resolved config.
- `run.json`: config, git commit, package versions, devices, host, start and end time.
- `epochs.jsonl`: one row per epoch (deterministic metrics, then measured resources).
- `steps.jsonl`: one row every `log_every` steps: the LR-change log the seed asks for.
- `evals.jsonl`: with `eval_every_steps` K, one row per validation evaluation at every multiple
  of K steps (steps and examples to a target are read from these).
- `tb/`: TensorBoard event files with the same scalars (tensorboardX: no TensorFlow needed).

Non-finite floats are written as JSON `null`; an optional field that is None or NaN is left out.
A strategy's readouts (`lr_scale`, `variability`, `noise_to_signal`, ...: readings of its optimizer
state that it declares, `train.strategies`) are one mapping per row, `readouts` (`readout_means` in
an epoch row), holding only those it declares and that have a value.

The rows are typed (train/rows.py): `StepRow`, `EpochRow` and `EvalRow` are the schema of the
JSONL files, the `Recorder` writes them and `read_steps`/`read_epochs`/`read_evals` read them back.
A row with a missing required field or a field the schema does not know is an error naming the
file, the line and the field. run.json records the schema's version as `records_schema` (see
`SCHEMA_VERSION`).
"""

from collections.abc import Mapping, Sequence
import datetime
import hashlib
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

from train.rows import RUN_INFO as RUN_INFO
from train.rows import SCHEMA_KEY as SCHEMA_KEY
from train.rows import SCHEMA_VERSION as SCHEMA_VERSION
from train.rows import STEP_METRICS as STEP_METRICS

# The rows' schema and readers, under the names the records have always had.
from train.rows import EpochRow as EpochRow
from train.rows import EvalRow as EvalRow
from train.rows import StepRow as StepRow
from train.rows import _clean as _clean
from train.rows import read_epochs as read_epochs
from train.rows import read_evals as read_evals
from train.rows import read_steps as read_steps
from train.rows import schema_version as schema_version

PACKAGES = ("jax", "jaxlib", "optax", "flax", "orbax-checkpoint", "grain", "tensorflow-datasets",
            "tokenizers", "numpy", "gradvar-optax")


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
  info = _cpuinfo()
  cpu = info.get("model name") or platform.processor() or platform.machine()
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {"device_kind": devices[0].device_kind, "platform": devices[0].platform,
          "device_count": len(devices), "process_count": jax.process_count(),
          "host": socket.gethostname(), "cpu": cpu, "cpu_cores": os.cpu_count(),
          "cpus_usable": usable, **_cpu_identity(info),
          "jax": jax.__version__, "python": platform.python_version(),
          # Other processes slow the figures down; this says how busy the machine was.
          "load_avg_1m": round(os.getloadavg()[0], 2)}


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if not line.strip():
          break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
  except OSError:
    pass
  return fields


def _cpu_identity(info: dict[str, str]) -> dict[str, str]:
  """What tells two CPUs apart where the model name does not ("AMD EPYC" on a VM): the family,
  model and stepping, and a digest of the instruction-set flags, which XLA's CPU code generation
  follows. CPU runs are bitwise reproducible only on the same kind of CPU with the same number
  of usable cores."""
  out = {}
  if all(k in info for k in ("cpu family", "model", "stepping")):
    out["cpu_id"] = f"family {info['cpu family']} model {info['model']} stepping {info['stepping']}"
  if "flags" in info:
    flags = " ".join(sorted(info["flags"].split()))
    out["cpu_flags_sha1"] = hashlib.sha1(flags.encode()).hexdigest()[:12]
  return out


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_memory_mb(devices) -> float | None:
  """Peak device memory of the first device, where the backend reports it (GPU/TPU)."""
  try:
    stats = devices[0].memory_stats()
  except Exception:  # backends raise various errors
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _as_row(cls, row, where: str):
  if isinstance(row, cls):
    return row
  if isinstance(row, Mapping):  # the loop's dicts, until it builds the rows itself
    return cls.from_json(row, where)
  raise ValueError(f"{where}: expected a {cls.__name__} or a dict, got {type(row).__name__}")


def _scalars(row: dict[str, Any], readouts: str, suffix: str):
  """A row's finite numbers as (tag, value), its readouts tagged `<name><suffix>`."""
  items = [(k, v) for k, v in row.items() if k != readouts]
  items += [(k + suffix, v) for k, v in row.get(readouts, {}).items()]
  return [(k, v) for k, v in items
          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


class Recorder:
  """Writes the run's records; only the main process writes (`enabled`)."""

  def __init__(self, workdir: pathlib.Path, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tb"))

  def write_json(self, name: str, payload: dict) -> None:
    if name == RUN_INFO:
      # run.json says which schema its folder's rows follow, whoever assembles it.
      payload = {**payload, SCHEMA_KEY: SCHEMA_VERSION}
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

  def steps(self, rows: Sequence[StepRow | Mapping[str, Any]]) -> None:
    """Appends rows to steps.jsonl. A dict is checked as a `StepRow`, on every process (so that
    a bad row stops all of them, not process 0 alone)."""
    rows = [_as_row(StepRow, r, "Recorder.steps").as_dict() for r in rows]
    self._append("steps.jsonl", rows)
    if self._tb is not None:
      for row in rows:
        for key, value in _scalars(row, "readouts", ""):
          if key not in ("step", "epoch"):
            self._tb.add_scalar(f"step/{key}", value, row["step"])

  def epoch(self, row: EpochRow | Mapping[str, Any]) -> None:
    """Appends a row to epochs.jsonl; a dict is checked as an `EpochRow`, on every process."""
    row = _as_row(EpochRow, row, "Recorder.epoch").as_dict()
    self._append("epochs.jsonl", [row])
    if self._tb is not None:
      for key, value in _scalars(row, "readout_means", "_mean"):
        if key != "epoch":
          self._tb.add_scalar(f"epoch/{key}", value, row["epoch"])
      self._tb.flush()

  def eval(self, row: EvalRow | Mapping[str, Any]) -> None:
    """Appends a row to evals.jsonl; a dict is checked as an `EvalRow`, on every process."""
    row = _as_row(EvalRow, row, "Recorder.eval").as_dict()
    self._append("evals.jsonl", [row])
    if self._tb is not None:
      for key, value in _scalars(row, "readouts", ""):
        if key not in ("step", "epoch"):
          self._tb.add_scalar(f"eval/{key}", value, row["step"])
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

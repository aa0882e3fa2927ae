"""The runner: one `python -m train` subprocess per task x strategy x LR x seed.

One process per run keeps the resource figures (peak RSS, CPU time) per run and isolates
failures. The runner is resumable: a run is finished when its `run.json` has an `end`
(`benchmarks.runs.state`); finished
runs are skipped, unfinished ones continue from their checkpoint (`--resume=allow-fresh`). Every
run of an output folder shares one data cache (so all runs of a task see the same learned
vocabulary) and one JAX compilation cache.

Layout of the output folder:

    suite.toml                  the exact suite file used
    commands.json               every compare/calibrate invocation on this folder, with its date
    runs/<task>/<strategy>/lr<lr>/seed<seed>/    evaluation runs (untuned LR and tuned LRs)
    tune/<task>/<strategy>/lr<lr>/seed<seed>/    --tune selection runs on the tuning seeds,
                                                 extension points included (benchmarks.tuning)
    reference/<task>/<baseline>/lr<lr>/seed<seed>/  calibration runs on the reference seeds
    .cache/, .jax_cache/        shared data and compilation caches (ignored by .gitignore)

Each run folder holds the complete config that the runner starts the run from
(`run_config.json`: `python -m train --config run_config.json`; no other config crosses the
process boundary), train's records (config.json, run.json, epochs.jsonl, steps.jsonl), the
subprocess's output (`train.log`) and the runner's measurements per attempt (`bench.json`).
"""

from collections.abc import Callable, Iterable
import dataclasses
import fcntl
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
from typing import Optional

from tqdm import tqdm

from benchmarks import runs as runs_lib
from benchmarks import suite as suite_lib
from train import config as config_lib
from train import records

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Records that a run's own folder keeps; heavy state stays out of what gets committed.
COMMANDS_LOCK = ".commands.lock"
GITIGNORE = """\
# Written by `python -m benchmarks`: checkpoints, final params, caches and TensorBoard files are
# large and reproducible; the records (json/jsonl), logs, REPORT.md and plots are kept.
**/checkpoints/
**/final/
**/tb/
.cache/
.jax_cache/
.commands.lock
"""
# Config fields that may differ between two invocations without changing what a run records
# (their `records` role in `train.config`).
_IGNORED_FIELDS = config_lib.field_names(records=False)
# The file in each run folder that the run is started from.
RUN_CONFIG = runs_lib.RUN_CONFIG
# A control's run folder: which run it was derived from, and the LR it got.
CONTROL = runs_lib.CONTROL


class Interrupted(Exception):
  """SIGTERM or Ctrl-C: the current run was stopped and will resume on the next compare."""


def status(workdir: pathlib.Path) -> str:
  """'finished' (run.json has an end), 'partial' (stopped or failed: the folder exists) or
  'absent' (`benchmarks.runs.state`)."""
  state = runs_lib.state(workdir)
  return "partial" if state in (runs_lib.STOPPED, runs_lib.FAILED) else state


def check_config(run: suite_lib.Run, workdir: pathlib.Path) -> None:
  """A run folder made with other settings must not be skipped or resumed as if it were this run."""
  path = workdir / runs_lib.CONFIG
  if not path.exists():
    return
  stored = json.loads(path.read_text())
  expected = run.config(str(workdir)).to_json()
  # Fields only one side knows were added or removed by a code change; they do not count.
  for key in sorted(set(stored) & set(expected)):
    if key in _IGNORED_FIELDS:
      continue
    if stored.get(key) != expected.get(key):
      raise ValueError(
          f"{workdir}: this run was made with {key}={stored.get(key)!r}, the suite now asks for "
          f"{key}={expected.get(key)!r}; use another --out, or delete the folder to rerun it")


def _read_bench(workdir: pathlib.Path) -> dict:
  return runs_lib.read_json(workdir / runs_lib.BENCH) or {"attempts": []}


def _write_bench(workdir: pathlib.Path, bench: dict) -> None:
  runs_lib.write_json_atomic(workdir / runs_lib.BENCH, bench)


def run_config(run: suite_lib.Run, workdir: pathlib.Path, out: pathlib.Path,
               data_dir: Optional[str]) -> config_lib.Config:
  """The complete config of `run`: the suite's, with the fields that the runner owns."""
  return dataclasses.replace(run.config(str(workdir)), cache_dir=str(out / ".cache"),
                             data_dir=str(data_dir) if data_dir else None, quiet=True)


def command(config_file: pathlib.Path, resume: Optional[str]) -> list[str]:
  cmd = [sys.executable, "-m", "train", "--config", str(config_file)]
  if resume:
    cmd.append(f"--resume={resume}")
  return cmd


def environment(out: pathlib.Path) -> dict:
  env = dict(os.environ)
  # Seeds of one strategy compile the same step: the persistent cache makes that a lookup.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out / ".jax_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return env


def execute(run: suite_lib.Run, out: pathlib.Path, data_dir: Optional[str]) -> int:
  """Runs (or continues) one run in its own process; returns its exit code."""
  workdir = out / run.relpath()
  state = status(workdir)
  if state == "finished":
    return 0
  bench = _read_bench(workdir)
  resume = "allow-fresh" if state == "partial" else None
  cmd = command(workdir / RUN_CONFIG, resume)
  attempt = {"start": records.now(), "command": cmd[1:], "resume": resume}
  bench["attempts"].append(attempt)
  t0 = time.perf_counter()
  proc = None
  # The folder is made inside the `try`: a stop from outside (SIGTERM, Ctrl-C) at any point after
  # it exists stops the child, if there is one yet, and records the attempt as interrupted.
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    run_config(run, workdir, out, data_dir).write(workdir / RUN_CONFIG)
    if run.control:
      (workdir / CONTROL).write_text(json.dumps(dict(run.control), indent=2) + "\n")
    _write_bench(workdir, bench)
    with open(workdir / runs_lib.LOG, "a") as log:
      log.write(f"# {attempt['start']} {' '.join(cmd[1:])}\n")
      log.flush()
      proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=environment(out), stdout=log,
                              stderr=subprocess.STDOUT)
      _, wait_status, usage = os.wait4(proc.pid, 0)
      rc = os.waitstatus_to_exitcode(wait_status)
      proc.returncode = rc
  except BaseException:
    if proc is not None and proc.returncode is None:
      # Stopped from outside: let the run write what it can (a checkpoint), then go.
      proc.terminate()
      try:
        proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    attempt.update(end=records.now(), wall_s=time.perf_counter() - t0,
                   rc=None if proc is None else proc.returncode, interrupted=True)
    _write_bench(workdir, bench)
    raise
  attempt.update(end=records.now(), wall_s=time.perf_counter() - t0, rc=rc,
                 cpu_s=usage.ru_utime + usage.ru_stime,
                 max_rss_mb=usage.ru_maxrss / 1024)  # KiB on Linux
  _write_bench(workdir, bench)
  return rc


def _wall(workdir: pathlib.Path) -> Optional[float]:
  """Seconds the finished run took, over all its attempts, for the time-left estimate."""
  walls = [a.get("wall_s") for a in _read_bench(workdir)["attempts"]]
  walls = [w for w in walls if w is not None]
  return sum(walls) if walls else None


class Progress:
  """A bar over the runs left, with a time-left estimate from runs already finished per task."""

  def __init__(self, out: pathlib.Path, total: int, enabled: bool = True):
    self.out = out
    self.seconds: dict[str, list[float]] = {}
    self.bar = tqdm(total=total, unit="run", disable=not enabled, dynamic_ncols=True,
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} runs, "
                               "{elapsed} elapsed{postfix}")

  def learn(self, runs: Iterable[suite_lib.Run]) -> None:
    for run in runs:
      wall = _wall(self.out / run.relpath())
      if wall is not None and status(self.out / run.relpath()) == "finished":
        self.seconds.setdefault(run.task, []).append(wall)

  def estimate(self, pending: list[suite_lib.Run]) -> Optional[float]:
    every = [s for v in self.seconds.values() for s in v]
    if not every:
      return None
    fallback = statistics.mean(every)
    return sum(statistics.mean(self.seconds[r.task]) if r.task in self.seconds else fallback
               for r in pending)

  def show(self, run: suite_lib.Run, pending: list[suite_lib.Run]) -> None:
    self.bar.set_description_str(f"{run.kind}/{run.task}/{run.strategy}/lr{run.lr:g}/"
                                 f"seed{run.seed}")
    left = self.estimate(pending)
    self.bar.set_postfix_str("time left ?" if left is None else f"time left ~{_hms(left)}")

  def done(self, run: suite_lib.Run, rc: int, message: str) -> None:
    if rc == 0:
      wall = _wall(self.out / run.relpath())
      if wall is not None:
        self.seconds.setdefault(run.task, []).append(wall)
    self.bar.update(1)
    self.bar.write(message)

  def close(self):
    self.bar.close()


def _hms(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _summary_line(run: suite_lib.Run, out: pathlib.Path, rc: int) -> str:
  workdir = out / run.relpath()
  name = f"{run.kind}/{run.task}/{run.strategy}/lr{run.lr:g}/seed{run.seed}"
  if rc != 0:
    return f"FAILED (exit {rc}) {name}: see {workdir / runs_lib.LOG}"
  try:
    last = (workdir / runs_lib.EPOCHS).read_text().strip().splitlines()[-1]
    row = json.loads(last)
    return (f"done {name}: val_loss {row['val_loss']} val_acc {row['val_accuracy']} "
            f"({_wall(workdir) or 0:.0f}s)")
  except (OSError, IndexError, ValueError, KeyError):
    return f"done {name}"


@dataclasses.dataclass
class Outcome:
  ran: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  failed: list = dataclasses.field(default_factory=list)


def run_all(runs: list[suite_lib.Run], out: pathlib.Path, data_dir: Optional[str],
            progress: bool = True,
            more: Optional[Callable[[], list[suite_lib.Run]]] = None,
            expected_more: int = 0) -> Outcome:
  """Runs every unfinished run in order; `more` adds runs once these are done (tuned LRs).

  A failed run is reported and the others still run; Ctrl-C or SIGTERM stops the current run
  (it resumes next time) and raises `Interrupted`.
  """
  outcome = Outcome()
  seen, todo = set(), []
  for run in runs:
    if run.key not in seen:
      seen.add(run.key)
      todo.append(run)
  for run in todo:
    check_config(run, out / run.relpath())
  pending = [r for r in todo if status(out / r.relpath()) != "finished"]
  outcome.skipped = [r for r in todo if status(out / r.relpath()) == "finished"]
  bar = Progress(out, len(pending) + expected_more, enabled=progress)
  bar.learn(outcome.skipped)
  if outcome.skipped:
    bar.bar.write(f"{len(outcome.skipped)} finished runs found in {out}; skipping them")

  def handle_term(signum, frame):
    raise Interrupted(f"signal {signum}")

  previous = signal.signal(signal.SIGTERM, handle_term)
  try:
    phase = 0
    while True:
      while pending:
        run = pending.pop(0)
        bar.show(run, [run] + pending)
        try:
          rc = execute(run, out, data_dir)
        except KeyboardInterrupt:
          raise Interrupted("Ctrl-C") from None
        (outcome.ran if rc == 0 else outcome.failed).append(run)
        bar.done(run, rc, _summary_line(run, out, rc))
      if more is None or phase:
        break
      phase = 1
      extra = [r for r in more() if r.key not in seen]
      for run in extra:
        seen.add(run.key)
        check_config(run, out / run.relpath())
      done = [r for r in extra if status(out / r.relpath()) == "finished"]
      outcome.skipped += done
      pending = [r for r in extra if r not in done]
      bar.bar.total = bar.bar.n + len(pending)
      bar.bar.refresh()
  finally:
    signal.signal(signal.SIGTERM, previous)
    bar.close()
  return outcome


def prepare_out(suite: suite_lib.Suite, out: pathlib.Path, argv: list[str]) -> None:
  """Writes the suite used, the .gitignore, and appends this invocation to commands.json."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "suite.toml").write_text(suite.text)
  gitignore = out / ".gitignore"
  if not gitignore.exists():
    gitignore.write_text(GITIGNORE)
  path = out / "commands.json"
  # Two lanes on one folder start at the same moment: the read-append-write is serialised by a
  # lock, and the file is replaced whole, so neither drops the other's entry nor reads half a file.
  with open(out / COMMANDS_LOCK, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      history = json.loads(path.read_text()) if path.exists() else []
    except ValueError as e:
      raise ValueError(f"{path} is not JSON ({e}); fix or move it (nothing was run)") from None
    history.append({"date": records.now(), "command": "python -m benchmarks " + " ".join(argv),
                    "git": records.git_commit()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(tmp, path)

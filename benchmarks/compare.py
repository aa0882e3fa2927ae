"""The comparison runner: one `python -m train` subprocess per task x strategy x LR x seed.

One process per run keeps the resource figures (peak RSS, CPU time) per run and isolates
failures. The runner is resumable: a run is finished when its `run.json` has an `end`; finished
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

The order of work: `tune` runs the tuning loop (the initial grids, then one point beyond an edge
pick at a time, up to the suite's `max_extensions`); `calibrate` trains the reference strategy at
its tuned LR; `compare --tune` runs the evaluation runs at the picks, the adaptive and reference
strategies first, then the controls, derived from their runs: `gradvar-null` at gradvar's LR,
`matched-X` at the mean `effective_lr_mean` of X's run on the same task and seed (its folder is
named by that LR; `control.json` there records it and the source run), and `replay-X` with
`replay_from` = X's run folder on the next evaluation seed (cyclically), relative to the
repository root, the child's working directory. A suite with declared primaries is refused
evaluation runs until its thresholds are calibrated.
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

from benchmarks import metrics
from benchmarks import suite as suite_lib
from train import config as config_lib
from train import control_kinds
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
RUN_CONFIG = "run_config.json"
# A control's run folder: which run it was derived from, and the LR it got.
CONTROL = "control.json"


class Interrupted(Exception):
  """SIGTERM or Ctrl-C: the current run was stopped and will resume on the next compare."""


def status(workdir: pathlib.Path) -> str:
  """'finished' (run.json has an end), 'partial' (the folder exists) or 'absent'."""
  try:
    info = json.loads((workdir / "run.json").read_text())
    if info.get("end"):
      return "finished"
  except (OSError, ValueError):
    pass
  return "partial" if workdir.exists() else "absent"


def check_config(run: suite_lib.Run, workdir: pathlib.Path) -> None:
  """A run folder made with other settings must not be skipped or resumed as if it were this run."""
  path = workdir / "config.json"
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
  try:
    return json.loads((workdir / "bench.json").read_text())
  except (OSError, ValueError):
    return {"attempts": []}


def _write_bench(workdir: pathlib.Path, bench: dict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / "bench.json.tmp"
  tmp.write_text(json.dumps(bench, indent=2, sort_keys=True) + "\n")
  tmp.replace(workdir / "bench.json")


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
    with open(workdir / "train.log", "a") as log:
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
    return f"FAILED (exit {rc}) {name}: see {workdir / 'train.log'}"
  try:
    last = (workdir / "epochs.jsonl").read_text().strip().splitlines()[-1]
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


def evaluation_lrs(suite: suite_lib.Suite, out: pathlib.Path, tuned: bool) -> dict:
  """task -> strategy -> base LR of the evaluation runs (None: tuning not complete).

  Untuned: the task's LR for every strategy. Tuned: each strategy's pick, a control's the pick
  of its adaptive strategy; tasks outside `tune_tasks` keep their LR.
  """
  from benchmarks import tuning
  picks = tuning.selection(suite, out) if tuned else {}
  lrs = {}
  for task in suite.tasks:
    if tuned and task in suite.tune_tasks:
      lrs[task] = {s: tuning.tuned_lr(picks, suite, task, s)
                   for s in suite.task_strategies(task)}
    else:
      lrs[task] = {s: suite.strategy_lr(task, s) for s in suite.task_strategies(task)}
  return lrs


def adaptive_runs(suite: suite_lib.Suite, lrs: dict) -> list[suite_lib.Run]:
  """The evaluation runs of the tuned (non-control) strategies, seed-major."""
  return [suite.run(t, s, seed, lr=lrs[t][s]) for seed in suite.seeds for t in suite.tasks
          for s in suite.task_tuned_strategies(t)
          if lrs[t].get(s) is not None and seed in suite.seeds_of(t, s)]


def control_runs(suite: suite_lib.Suite, out: pathlib.Path,
                 lrs: dict) -> tuple[list[suite_lib.Run], list[str]]:
  """The controls' evaluation runs, from their adaptive strategy's finished runs.

  Returns the runs and, for each one that cannot be made yet, why (its source is missing).
  """
  runs, waiting = [], []
  for seed in suite.seeds:
    for task in suite.tasks:
      for strategy in suite.task_controls(task):
        if seed not in suite.seeds_of(task, strategy):
          continue
        kind, source = suite_lib.control_of(strategy)
        kind = control_kinds.get(kind)
        base = lrs[task][strategy]
        if base is None:
          waiting.append(f"{task}/{strategy}: {source}'s tuning is not complete")
          continue
        src = suite.run(task, source, kind.source_seed(suite.all_seeds_of(task, source), seed),
                        lr=base)
        if kind.follows_source_run and status(out / src.relpath()) != "finished":
          waiting.append(f"{task}/{strategy}/seed{seed}: {src.relpath()} has not finished")
          continue
        plan = kind.plan(control_kinds.Source(source, base, src.seed, out / src.relpath(),
                                              src.relpath(), REPO_ROOT))
        run = suite.run(task, strategy, seed, lr=plan.lr)
        if plan.options:
          run = dataclasses.replace(run, options=plan.options)
        info = control_kinds.control_json(strategy, plan, source)
        runs.append(dataclasses.replace(run, control=tuple(info.items())))
  return runs, waiting


def _check_grid(suite: suite_lib.Suite) -> None:
  if not suite.tuned_strategies:
    raise ValueError(f"{suite.path}: strategies: only controls are left to tune; controls are "
                     "never tuned (they run at their adaptive strategy's tuned LR)")
  if not any(suite.strategy_grid(t, s) for t in suite.tune_tasks
             for s in suite.task_tuned_strategies(t)):
    raise ValueError(f"{suite.path}: lr_grid: --tune needs a non-empty LR grid")


def run_tuning(suite: suite_lib.Suite, out: pathlib.Path, argv: Optional[list[str]] = None,
         data_dir: Optional[str] = None, progress: bool = True) -> Outcome:
  """The tuning loop: the initial grids, then the extension points the selection asks for.

  Each pass runs the tuning runs that the current selection waits for; a pass that would only
  repeat runs that failed in this invocation ends the loop (the selection stays incomplete).
  """
  from benchmarks import tuning
  _check_grid(suite)
  if argv is not None:
    prepare_out(suite, out, argv)
  total, failed = Outcome(), set()
  while True:
    needed = [r for r in tuning.needed_runs(suite, out) if r.key not in failed]
    if not needed:
      break
    outcome = run_all(needed, out, data_dir, progress=progress)
    total.ran += outcome.ran
    total.skipped += outcome.skipped
    total.failed += outcome.failed
    failed |= {r.key for r in outcome.failed}
    if not outcome.ran:
      break  # nothing new: the selection cannot move on
  picks = tuning.selection(suite, out)
  for task, by in picks.items():
    for strategy, p in by.items():
      state = ("incomplete" if not p["complete"] else
               "on an edge after the limit" if p["on_edge"] else "bracketed")
      print(f"tuned {task}/{strategy}: lr {p['lr']:g} ({state}; {p['extensions']} of "
            f"{p['max_extensions']} extensions; grid {[f'{x:g}' for x in p['grid']]})",
            file=sys.stderr)
  return total


def check_declared(suite: suite_lib.Suite) -> None:
  """Evaluation runs of a suite with declared primaries need its thresholds first."""
  if suite.analysis is None or not suite.analysis.primaries:
    return
  tasks = [t for t in dict.fromkeys(p.task for p in suite.analysis.primaries)
           if t in suite.tasks and t not in suite.calibration.thresholds]
  if tasks:
    where = f"--suite {suite.path or suite.name}"
    raise ValueError(
        f"{suite.path}: [analysis] declares primaries, but calibration.thresholds has no "
        f"{', '.join(tasks)}; the evaluation runs come after the targets: run `python -m "
        f"benchmarks tune {where}` and then `python -m benchmarks calibrate {where}` (with the "
        f"same --out), commit the suite file, then compare")


def compare(suite: suite_lib.Suite, out: pathlib.Path, argv: list[str], tune: bool = False,
            data_dir: Optional[str] = None, progress: bool = True,
            write_report: bool = True) -> int:
  """Runs the suite's grid (and the tuning, with `tune`); returns 0 when every run finished.

  Order: the tuning loop (with `tune`), then the evaluation runs of the adaptive and reference
  strategies, then the controls, which are derived from those runs.
  """
  check_declared(suite)
  if tune:
    _check_grid(suite)
  if not suite.calibration.thresholds:
    print(f"note: {suite.path} has no calibrated thresholds; convergence speed will be missing "
          f"from the report (run `python -m benchmarks calibrate --suite {suite.name}` first)",
          file=sys.stderr)
  prepare_out(suite, out, argv)
  total = Outcome()
  if tune:
    total = run_tuning(suite, out, data_dir=data_dir, progress=progress)
  settings = [False] + ([True] if tune else [])
  runs, lrs_by = [], {}
  for tuned in settings:
    lrs = evaluation_lrs(suite, out, tuned)
    if tune and not tuned and not suite.untuned_runs:
      # Only the tasks that are not tuned keep untuned evaluation runs.
      lrs = {t: by for t, by in lrs.items() if t not in suite.tune_tasks}
    lrs_by[tuned] = lrs
    runs += adaptive_runs(dataclasses.replace(suite, tasks={t: suite.tasks[t] for t in lrs}),
                          lrs)
  waiting = []

  def controls():
    found = []
    for lrs in lrs_by.values():
      sub = dataclasses.replace(suite, tasks={t: suite.tasks[t] for t in lrs})
      more, wait = control_runs(sub, out, lrs)
      found += more
      waiting.extend(wait)
    return found

  expected = sum(len(suite.seeds_of(t, c)) for lrs in lrs_by.values() for t in lrs
                 for c in suite.task_controls(t))
  outcome = run_all(runs, out, data_dir, progress=progress,
                    more=controls if suite.controls else None, expected_more=expected)
  for line in dict.fromkeys(waiting):
    print(f"  not run: {line}", file=sys.stderr)
  print(f"{len(outcome.ran)} runs trained, {len(outcome.skipped)} already finished, "
        f"{len(outcome.failed)} failed", file=sys.stderr)
  failed = total.failed + outcome.failed
  for run in failed:
    print(f"  failed: {out / run.relpath()} (see train.log there)", file=sys.stderr)
  if write_report:
    from benchmarks import report
    print(report.write(out))
  return 1 if failed else 0


def reference_lrs(suite: suite_lib.Suite, out: pathlib.Path) -> dict:
  """task -> the tuned LR of the reference strategy, for the tasks where tuning is done.

  A task whose tuning has started but is not complete is an error, and so is a suite with an
  [analysis] whose tuned tasks have not been tuned yet: the targets come from the tuned
  reference, after the tuning.
  """
  from benchmarks import tuning
  strategy = suite.calibration_strategy
  if not any(suite.strategy_grid(t, strategy) for t in suite.tune_tasks):
    return {}
  picks = tuning.selection(suite, out)
  where = f"--suite {suite.path or suite.name} --out {out}"
  lrs = {}
  for task in suite.tune_tasks:
    if task not in suite.tasks:
      continue
    entry = picks[task][strategy]
    started = any(x != "missing" for st in entry["states"].values() for x in st)
    if entry["complete"]:
      lrs[task] = entry["lr"]
    elif started or suite.analysis is not None:
      raise ValueError(
          f"calibrate: the tuning of {strategy} on {task} is not complete (its thresholds come "
          f"from {strategy} at its tuned LR); run `python -m benchmarks tune {where}` first")
  return lrs


def _calibration_lrs(old, new: Optional[dict], default: float):
  """calibration.lr: per task where tuned (the tasks calibrated before keep theirs), else one LR."""
  if new is None:
    return old if isinstance(old, dict) else default
  return {**(old if isinstance(old, dict) else {}), **new}


def calibrate(suite: suite_lib.Suite, out: pathlib.Path, argv: list[str], tasks=None,
              factor: Optional[float] = None, data_dir: Optional[str] = None,
              progress: bool = True) -> int:
  """Trains the baseline on the reference seeds and writes the thresholds into the suite file.

  Thresholds of tasks not calibrated now are kept. The suite file's other lines stay as written.
  """
  from benchmarks import report
  if suite.path is None:
    raise ValueError("calibrate: the suite must come from a file")
  if tasks:
    suite = suite.narrow(tasks=tasks)
  factor = suite.calibration.factor if factor is None else factor
  if not factor >= 1:
    raise ValueError(f"--factor: must be >= 1, got {factor}")
  lrs = reference_lrs(suite, out)
  prepare_out(suite, out, argv)
  runs = suite.reference_grid(lrs=lrs)
  outcome = run_all(runs, out, data_dir, progress=progress)
  if outcome.failed:
    for run in outcome.failed:
      print(f"  failed: {out / run.relpath()} (see train.log there)", file=sys.stderr)
    print("calibrate: reference runs failed; the suite file is unchanged", file=sys.stderr)
    return 1
  # The file as it is now: another task's calibration may have finished while these runs trained.
  old = suite_lib.load(str(suite.path)).calibration.raw
  thresholds = dict(old.get("thresholds", {}))
  best = dict(old.get("reference_best_val_loss", {}))
  for task in suite.tasks:
    losses = [report.read_run(out / r.relpath()).metrics(None)["best_val_loss"]
              for r in runs if r.task == task]
    thresholds[task] = round(metrics.threshold_from_reference(losses, factor), 6)
    best[task] = [None if v is None else round(v, 6) for v in losses]
  calibration = {
      "rule": suite_lib.RULE.format(factor=factor),
      "factor": factor,
      "strategy": suite.calibration_strategy,
      # The tuned LR per task where the reference strategy was tuned, else the suite's LR.
      "lr": _calibration_lrs(old.get("lr"), {t: lrs.get(t, suite.task_lr(t))
                                             for t in suite.tasks} if lrs else None, suite.lr),
      "reference_seeds": list(suite.calibration.reference_seeds),
      "date": records.now(),
      "commit": records.git_commit()["commit"] or "unknown",
      "thresholds": thresholds,
      "reference_best_val_loss": best,
  }
  text = suite_lib.with_calibration(suite.path.read_text(), calibration)
  suite_lib.parse(text, suite.path)  # never write a suite that would not load
  suite.path.write_text(text)
  (out / "suite.toml").write_text(text)
  for task in suite.tasks:
    print(f"{task}: threshold {thresholds[task]:.6g} (best val loss on seeds "
          f"{list(suite.calibration.reference_seeds)}: {best[task]})")
  print(f"wrote [calibration] to {suite.path}")
  return 0

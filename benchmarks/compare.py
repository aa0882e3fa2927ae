"""The comparison: which runs a suite needs, in which order, and the commands that run them.

`benchmarks.runner` trains them (one subprocess per run, resumable; its docstring gives the
output folder's layout).

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


import dataclasses
import pathlib
import sys
from typing import Optional

from benchmarks import metrics
from benchmarks import runner
from benchmarks import runs as runs_lib
from benchmarks import suite as suite_lib
from train import control_kinds
from train import records

# The runner's names that the plans below use.
REPO_ROOT = runner.REPO_ROOT
Interrupted = runner.Interrupted
Outcome = runner.Outcome
status = runner.status
prepare_out = runner.prepare_out
run_all = runner.run_all


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
    print(f"  failed: {out / run.relpath()} (see {runs_lib.LOG} there)", file=sys.stderr)
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
      print(f"  failed: {out / run.relpath()} (see {runs_lib.LOG} there)", file=sys.stderr)
    print("calibrate: reference runs failed; the suite file is unchanged", file=sys.stderr)
    return 1
  # The file as it is now: another task's calibration may have finished while these runs trained.
  old = suite_lib.load(str(suite.path)).calibration.raw
  thresholds = dict(old.get("thresholds", {}))
  best = dict(old.get("reference_best_val_loss", {}))
  for task in suite.tasks:
    losses = [runs_lib.read_run(out / r.relpath()).metrics(None)["best_val_loss"]
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

"""The figures of a comparison folder (results.json's content), from the run records alone.

`collect(out)` reads OUT/suite.toml and every run folder (`benchmarks.runs`), trains nothing, and
covers the runs found, listing the missing ones. `benchmarks.report` writes the result, with
REPORT.md's tables (`tables`, `sections`) and the plots (`plots`), which read these figures and
never compute them.

Per task, setting (untuned, tuned) and strategy: each figure of the metric catalogue
(`benchmarks.catalogue`) over the evaluation seeds, and the paired differences against the
baseline. Sections that only some folders have:
- with evals.jsonl in the run folders: steps and examples to target per run and strategy;
- with an [analysis] in the suite: the pre-registered primaries on the declared metric
  (`benchmarks.declared`);
- with OUT/regime.json (`python -m benchmarks regime`): the regime check.
A folder without them (every committed v1 one) gets exactly the report it had before.
"""

import pathlib
import platform
from typing import Optional

from benchmarks import budgets
from benchmarks import catalogue
from benchmarks import declared
from benchmarks import metrics
from benchmarks import runs as runs_lib
from benchmarks import stats
from benchmarks import suite as suite_lib
from benchmarks import tuning
from train import control_kinds
from train import records

STEP_COST = declared.STEP_COST
REGIME = declared.REGIME
analysed_setting = declared.analysed_setting


def _finished(out: pathlib.Path, run: suite_lib.Run) -> Optional[runs_lib.RunRecord]:
  # run.json first: the rows of an unfinished run (maybe being written) are not read.
  rec = runs_lib.read_finished(out / run.relpath())
  if rec is not None:
    return rec
  control = suite_lib.control_of(run.strategy)
  if control is not None and control_kinds.get(control[0]).lr_from_source:
    return _matched(out, run)
  return None


def control_of(strategy: str) -> Optional[str]:
  """The adaptive strategy a control belongs to (None for a strategy that is not a control)."""
  control = suite_lib.control_of(strategy)
  return None if control is None else control[1]


def _matched(out: pathlib.Path, run: suite_lib.Run) -> Optional[runs_lib.RunRecord]:
  """A control run (of a kind whose LR is read from X's run, `lr_from_source`) of the seed whose
  control.json names X's run at `run.lr`.

  Its folder is named by the LR it realised, not by X's LR, so it is found by its control.json
  (written by the runner: `{"control", "of", "source", "lr", ...}`).
  """
  want = suite_lib.lr_dirname(run.lr)
  base = out / run.kind / run.task / run.strategy
  for control in sorted(base.glob(f"*/seed{run.seed}/{runs_lib.CONTROL}")):
    c = runs_lib.read_json(control)
    if c.get("of") == control_of(run.strategy) and want in pathlib.Path(
        str(c.get("source", ""))).parts:
      rec = runs_lib.read_finished(control.parent)
      if rec is not None:
        rec.info = {**rec.info, "control": c}
        return rec
  return None


def tuning_selection(suite: suite_lib.Suite, out: pathlib.Path) -> dict:
  """The runner's picks: `tuning.selection` for a suite that brackets or declares an analysis
  (v2), else v1's view of the same picks on the initial grid, which the committed v1 folders'
  results.json keeps."""
  if suite.analysis is not None or suite.max_extensions:
    return tuning.selection(suite, out)
  return tuning.v1_selection(suite, out)


def _group(suite, out, task, strategy, lr, threshold) -> dict:
  """One strategy's runs at one LR over the evaluation seeds, with their statistics."""
  per_seed, records_ = {}, {}
  seeds = suite.seeds_of(task, strategy)
  for seed in seeds:
    run = suite.run(task, strategy, seed, lr=lr)
    rec = _finished(out, run)
    if rec is not None:
      per_seed[seed] = rec.metrics(threshold, suite.explode_factor)
      if _reads_budgets(suite):
        budgets.add_budgeted(rec, threshold, per_seed[seed], suite.task_budgets(task), run.epochs)
      records_[seed] = rec
  group = {"lr": lr, "seeds": sorted(per_seed), "missing_seeds": [s for s in seeds
                                                                  if s not in per_seed],
           "per_seed": per_seed, "summary": {}, "reach": {},
           "divergences": sum(m["diverged"] for m in per_seed.values())}
  for m in catalogue.of_kind("numeric"):  # evals.jsonl's and registered ones where runs have them
    if m.always or any(m.name in f for f in per_seed.values()):
      group["summary"][m.name] = metrics.t_interval(f.get(m.name)
                                                    for f in per_seed.values()).to_json()
  for m in catalogue.of_kind("reach"):
    if not (m.always or any(m.name in f for f in per_seed.values())):
      continue  # steps to target only where runs have evals.jsonl (all seeds' rows, or none)
    values = [per_seed[s].get(m.name) for s in sorted(per_seed)]
    group["reach"][m.name] = {"values": {s: per_seed[s].get(m.name) for s in sorted(per_seed)},
                              "reached": metrics.reached_count(values), "n": len(values),
                              "median": metrics.median_reached(values) if threshold else None}
  control_lrs = {s: r.info["control"].get("lr") for s, r in records_.items()
                 if "control" in r.info}
  if control_lrs:
    group["control_lrs"] = control_lrs
  return group, records_


def _reads_budgets(suite) -> bool:
  """Whether the budgeted figures are computed: for a suite that declares budgets or tests one."""
  metric = suite.analysis.metric if suite.analysis is not None else catalogue.DEFAULT
  return bool(suite.budgets) or catalogue.get(metric).budgeted


def _paired(group, base) -> dict:
  out = {}
  for m in catalogue.of_kind("numeric"):
    if m.paired and (not m.budgeted or any(m.name in f for f in group["per_seed"].values())):
      a = {s: f.get(m.name) for s, f in group["per_seed"].items()}
      b = {s: f.get(m.name) for s, f in base["per_seed"].items()}
      out[m.name] = metrics.paired_interval(a, b).to_json()
  for m in catalogue.of_kind("reach"):
    if m.paired and m.name in group["reach"] and m.name in base["reach"]:
      out[m.name] = metrics.paired_wins(group["reach"][m.name]["values"],
                                        base["reach"][m.name]["values"])
  for m in catalogue.of_kind("reach"):  # with a horizon: censored runs take it
    if m.horizon and m.name in group["reach"] and m.name in base["reach"]:
      out[m.name] = metrics.paired_wins(group["reach"][m.name]["values"],
                                        base["reach"][m.name]["values"])
      (a, ha), (b, hb) = declared.censored(group, m), declared.censored(base, m)
      # A budget arm stops before the baseline's horizon: a censored run of either takes the
      # longer of the pair's horizons, so that n.r. never counts as fewer steps than a reached
      # run (step-e2 censored at its own 624 steps against fixed's 900 read as 276 fewer).
      diffs = {}
      for s in a:
        if s not in b:
          continue
        h = max((x[s] for x in (ha, hb) if x.get(s) is not None), default=None)
        va, vb = stats.censor(a[s], h), stats.censor(b[s], h)
        if va is not None and vb is not None:
          diffs[s] = va - vb
      out[f"{m.name}_censored"] = metrics.t_interval(diffs.values()).to_json()
  return out


def collect(out: pathlib.Path) -> tuple[dict, dict]:
  """results.json's content, and the run records by (setting, task, strategy, seed) for plots."""
  suite_path = out / "suite.toml"
  if not suite_path.exists():
    raise ValueError(f"report: {out} has no suite.toml; is it an output folder of compare?")
  suite = suite_lib.parse(suite_path.read_text(), suite_path)
  thresholds = suite.calibration.thresholds
  tuned_any = (out / "tune").exists() and bool(suite.lr_grid)
  picks = tuning_selection(suite, out) if tuned_any else {}
  results = {"suite": suite.name, "description": suite.description,
             "baseline": suite.baseline, "seeds": list(suite.seeds),
             "strategies": list(suite.strategies), "tasks": {}, "tuning": picks,
             "calibration": suite.calibration.raw, "meta": _meta(out)}
  runs = {}
  for task in suite.tasks:
    threshold = thresholds.get(task)
    arms = suite.task_strategies(task)
    entry = {"threshold": threshold, "settings": {}}
    if task in suite.arms:
      entry["arms"] = {s: len(suite.seeds_of(task, s)) for s in arms}
    if suite.task_budgets(task):
      entry["budgets"] = _budgets_entry(suite, out, task)
    settings = {"untuned": {s: suite.strategy_lr(task, s) for s in arms}}
    if task in picks and all(p["complete"] for p in picks[task].values()):
      settings["tuned"] = {s: picks[task][control_of(s) or s]["lr"] for s in arms}
      if not suite.untuned_runs:
        # The runner trains no untuned run of a tuned task: runs that happen to sit at an
        # untuned LR are tuned ones, and the rest are not missing.
        del settings["untuned"]
    for setting, lrs in settings.items():
      groups = {}
      for strategy in arms:
        groups[strategy], recs = _group(suite, out, task, strategy, lrs[strategy], threshold)
        for seed, rec in recs.items():
          runs[(setting, task, strategy, seed)] = rec
      base = groups[suite.baseline]
      paired = {s: _paired(g, base) for s, g in groups.items() if s != suite.baseline}
      entry["settings"][setting] = {"strategies": groups, "paired": paired}
    results["tasks"][task] = entry
  analysis = suite.analysis
  if analysis is not None:
    results.update(declared.analyse(suite, analysis, results, picks,
                                    runs_lib.read_json(out / STEP_COST), control_of))
  regime = runs_lib.read_json(out / REGIME)
  if regime:
    results["regime"] = declared.regime_check(suite, results, regime)
  return results, runs


def _budgets_entry(suite, out: pathlib.Path, task: str) -> dict:
  """A budgeted task's budgets (epochs, and steps where a finished run gives steps per epoch),
  its budget arms (arm -> [strategy, epochs]) and its horizon-knowing strategies."""
  epochs = list(suite.task_budgets(task))
  found = {s: b for s, (base, b, on) in suite.budget_arms.items() if task in on}
  per_epoch = None
  for path in sorted((out / "runs" / task).glob(f"*/*/*/{runs_lib.RUN_INFO}")):
    rec = runs_lib.read_finished(path.parent)
    horizon = rec and budgets.run_horizon(rec)
    if horizon:
      per_epoch = horizon // (rec.epochs[-1].epoch if rec.epochs else epochs[-1])
      break
  return {"epochs": epochs, "steps": [b * per_epoch for b in epochs] if per_epoch else [],
          "arms": {s: [suite.budget_arms[s][0], b] for s, b in found.items()},
          "horizon_knowing": list(dict.fromkeys(suite.budget_arms[s][0] for s in found))}


def _meta(out: pathlib.Path) -> dict:
  infos = runs_lib.run_infos(out)
  starts = sorted(i["start"] for i in infos if i.get("start"))
  ends = sorted(i["end"] for i in infos if runs_lib.finished(i))
  commits = sorted({(i.get("git") or {}).get("commit") or "unknown" for i in infos})
  dirty = any((i.get("git") or {}).get("dirty") for i in infos)
  hardware = []
  for i in infos:
    hw = {k: v for k, v in (i.get("hardware") or {}).items() if k != "load_avg_1m"}
    if hw and hw not in hardware:
      hardware.append(hw)
  load = [(i.get("hardware") or {}).get("load_avg_1m") for i in infos]
  load = [x for x in load if metrics.finite(x)]
  versions = []
  for i in infos:
    v = i.get("versions")
    if v and v not in versions:
      versions.append(v)
  return {"report_date": records.now(), "runs_found": len(infos),
          "first_start": starts[0] if starts else None, "last_end": ends[-1] if ends else None,
          "commits": commits, "any_dirty": dirty, "hardware": hardware,
          "load_avg_1m_at_start": {"min": min(load), "max": max(load)} if load else None,
          "versions": versions, "python": platform.python_version(),
          "commands": runs_lib.read_json(out / "commands.json") or [],
          "report_commit": records.git_commit()}


"""REPORT.md, results.json and plots of a comparison folder, from the run records alone.

`write(out)` can be rerun at any time (`python -m benchmarks report DIR`): it reads DIR/suite.toml
and every run folder, trains nothing, and covers the runs found, listing the missing ones.
This module computes the figures (results.json's content); `tables` formats REPORT.md.

Sections that only some folders have:
- with evals.jsonl in the run folders: steps and examples to target per run and strategy;
- with an [analysis] in the suite (`Suite.analysis`: `primaries` as (task, A, B), `alpha`,
  `permutations`, `bootstrap`): the pre-registered primaries (`benchmarks.stats`: sign-flip
  test, Holm), the count of secondary intervals that exclude 0 against chance, the tuned LRs,
  and time to target from DIR/step_cost.json (`benchmarks.perf.step_cost`) where it exists;
- with DIR/regime.json (`python -m benchmarks regime`): the regime check.
A folder without them (every committed v1 one) gets exactly the report it had before.
"""

import dataclasses
import json
import math
import pathlib
import platform
from typing import Any, Optional

from benchmarks import metrics
from benchmarks import plots
from benchmarks import stats
from benchmarks import suite as suite_lib
from benchmarks import tables
from benchmarks import tuning
from train import control_kinds
from train import records


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


@dataclasses.dataclass
class RunRecord:
  """One run folder's records."""
  path: pathlib.Path
  info: dict
  epochs: list[records.EpochRow]
  steps: list[records.StepRow]
  bench: dict
  # evals.jsonl's rows (`records.EvalRow`); None for a run without one (before
  # `eval_every_steps`), which then has no steps-to-target figures.
  evals: Optional[list] = None

  @property
  def finished(self) -> bool:
    return bool(self.info.get("end"))

  def metrics(self, threshold: Optional[float], explode_factor: float = 2.0) -> dict:
    return metrics.run_metrics(self.epochs, self.steps, self.info.get("test"), threshold,
                               explode_factor, self.bench, self.info.get("compile_s"),
                               evals=self.evals)


def _read_evals(path: pathlib.Path) -> Optional[list]:
  if not path.exists():
    return None
  return records.read_evals(path)


def read_run(workdir: pathlib.Path, info: Optional[dict] = None) -> RunRecord:
  """A run folder's records; `info` is its run.json where the caller has read it already."""
  info = _read_json(workdir / records.RUN_INFO) if info is None else info
  records.schema_version(info, workdir / records.RUN_INFO)
  return RunRecord(workdir, info, records.read_epochs(workdir / "epochs.jsonl", missing_ok=True),
                   records.read_steps(workdir / "steps.jsonl", missing_ok=True),
                   _read_json(workdir / "bench.json"), _read_evals(workdir / "evals.jsonl"))


def _finished(out: pathlib.Path, run: suite_lib.Run) -> Optional[RunRecord]:
  # run.json first: the rows of an unfinished run (maybe being written) are not read.
  info = _read_json(out / run.relpath() / records.RUN_INFO)
  if info.get("end"):
    return read_run(out / run.relpath(), info)
  control = suite_lib.control_of(run.strategy)
  if control is not None and control_kinds.get(control[0]).lr_from_source:
    return _matched(out, run)
  return None


def control_of(strategy: str) -> Optional[str]:
  """The adaptive strategy a control belongs to (None for a strategy that is not a control)."""
  control = suite_lib.control_of(strategy)
  return None if control is None else control[1]


def _matched(out: pathlib.Path, run: suite_lib.Run) -> Optional[RunRecord]:
  """A control run (of a kind whose LR is read from X's run, `lr_from_source`) of the seed whose
  control.json names X's run at `run.lr`.

  Its folder is named by the LR it realised, not by X's LR, so it is found by its control.json
  (written by the runner: `{"control", "of", "source", "lr", ...}`).
  """
  want = suite_lib.lr_dirname(run.lr)
  base = out / run.kind / run.task / run.strategy
  for control in sorted(base.glob(f"*/seed{run.seed}/control.json")):
    c = _read_json(control)
    if c.get("of") == control_of(run.strategy) and want in pathlib.Path(
        str(c.get("source", ""))).parts:
      info = _read_json(control.parent / records.RUN_INFO)
      if info.get("end"):
        rec = read_run(control.parent, info)
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
    rec = _finished(out, suite.run(task, strategy, seed, lr=lr))
    if rec is not None:
      per_seed[seed] = rec.metrics(threshold, suite.explode_factor)
      records_[seed] = rec
  group = {"lr": lr, "seeds": sorted(per_seed), "missing_seeds": [s for s in seeds
                                                                  if s not in per_seed],
           "per_seed": per_seed, "summary": {}, "reach": {},
           "divergences": sum(m["diverged"] for m in per_seed.values())}
  for key, *_ in tables.NUMERIC:
    group["summary"][key] = metrics.t_interval(m[key] for m in per_seed.values()).to_json()
  for key, *_ in tables.EVAL_NUMERIC:  # runs with evals.jsonl only
    if any(key in m for m in per_seed.values()):
      group["summary"][key] = metrics.t_interval(m.get(key)
                                                 for m in per_seed.values()).to_json()
  # Steps to target only where runs have evals.jsonl (all seeds' rows, or none of them).
  steps_key = [k for k in tables.EVAL_REACH if any(k in m for m in per_seed.values())]
  for key in [k for k, *_ in tables.REACH] + steps_key:
    values = [per_seed[s].get(key) for s in sorted(per_seed)]
    group["reach"][key] = {"values": {s: per_seed[s].get(key) for s in sorted(per_seed)},
                           "reached": metrics.reached_count(values), "n": len(values),
                           "median": metrics.median_reached(values) if threshold else None}
  control_lrs = {s: r.info["control"].get("lr") for s, r in records_.items()
                 if "control" in r.info}
  if control_lrs:
    group["control_lrs"] = control_lrs
  return group, records_


def _censored_steps(group) -> tuple[dict, dict]:
  """Per seed, steps to target (None: not reached) and the horizon a censored run takes."""
  steps = {s: m.get("steps_to_target") for s, m in group["per_seed"].items()}
  horizon = {s: m.get("horizon_steps") for s, m in group["per_seed"].items()}
  return steps, horizon


def _paired(group, base) -> dict:
  out = {}
  for key in tables.PAIRED:
    a = {s: m[key] for s, m in group["per_seed"].items()}
    b = {s: m[key] for s, m in base["per_seed"].items()}
    out[key] = metrics.paired_interval(a, b).to_json()
  for key, *_ in tables.REACH:
    a = group["reach"][key]["values"]
    b = base["reach"][key]["values"]
    out[key] = metrics.paired_wins(a, b)
  if "steps_to_target" in group["reach"] and "steps_to_target" in base["reach"]:
    out["steps_to_target"] = metrics.paired_wins(group["reach"]["steps_to_target"]["values"],
                                                 base["reach"]["steps_to_target"]["values"])
    (a, ha), (b, hb) = _censored_steps(group), _censored_steps(base)
    diffs = {s: stats.censor(a[s], ha[s]) - stats.censor(b[s], hb[s]) for s in a
             if s in b and stats.censor(a[s], ha[s]) is not None
             and stats.censor(b[s], hb[s]) is not None}
    out["steps_to_target_censored"] = metrics.t_interval(diffs.values()).to_json()
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
    results.update(_analysis(suite, analysis, results, picks, _read_json(out / STEP_COST)))
  regime = _read_json(out / REGIME)
  if regime:
    results["regime"] = regime_check(suite, results, regime)
  return results, runs


STEP_COST = "step_cost.json"
REGIME = "regime.json"


def cost_ratios(step_cost: dict, task: str) -> Optional[dict]:
  """Per strategy, its compiled step's time over fixed's on the task (from step_cost.json,
  written by `benchmarks.perf.step_cost`); None when not measured."""
  return ((step_cost.get("tasks") or {}).get(task) or {}).get("ratios") or None


def _time_to_target(steps: Optional[float], strategy: str, ratios: Optional[dict]):
  if steps is None or not ratios or not metrics.finite(ratios.get(strategy)):
    return None
  return steps * ratios[strategy]


def _analysis(suite, analysis, results: dict, picks: dict, step_cost: dict) -> dict:
  """The pre-registered primaries with Holm's correction, the secondary count, the tuned LRs."""
  alpha, permutations, bootstrap = analysis.alpha, analysis.permutations, analysis.bootstrap

  def compare(task, a, b):
    """A vs B on steps to target: the primaries' test, interval and time to target."""
    entry = results["tasks"][task]
    setting = plots.analysed_setting(entry)
    groups = entry["settings"][setting]["strategies"]
    (sa, ha), (sb, hb) = _censored_steps(groups[a]), _censored_steps(groups[b])
    c = stats.paired_comparison(sa, sb, ha, hb, permutations, bootstrap, seed=0,
                                confidence=1 - alpha)
    ratios = cost_ratios(step_cost, task)
    # The medians of the steps themselves, n.r. ordered last (None when it falls on one).
    med = {name: metrics.median_reached([st[s] for s in c["seeds"]])
           for name, st in ((a, sa), (b, sb))}
    c.update(task=task, a=a, b=b, setting=setting,
             median_steps={"a": med[a], "b": med[b]},
             time_to_target={"a": _time_to_target(med[a], a, ratios),
                             "b": _time_to_target(med[b], b, ratios)},
             cost_ratios=None if ratios is None else {n: ratios.get(n) for n in (a, b)})
    return c

  primaries = []
  for primary in analysis.primaries:
    task, a, b = primary.task, primary.a, primary.b
    entry = results["tasks"].get(task)
    if entry is None:
      raise ValueError(f"analysis.primaries: task {task!r} is not in the suite")
    groups = entry["settings"][plots.analysed_setting(entry)]["strategies"]
    for name in (a, b):
      if name not in groups:
        raise ValueError(f"analysis.primaries: {name!r} is not a strategy of the suite")
    primaries.append(compare(task, a, b))
  for c, p in zip(primaries, stats.holm([c["p_value"] for c in primaries])):
    c["p_holm"] = p
    c["significant"] = c["p_value"] is not None and p <= alpha
  # Each adaptive strategy against each of its controls on the same test (secondary, no
  # correction), where both have runs; a pair that is also a primary is marked so.
  declared = {(p.task, frozenset((p.a, p.b))) for p in analysis.primaries}
  controls = []
  for task, entry in results["tasks"].items():
    groups = entry["settings"][plots.analysed_setting(entry)]["strategies"]
    for strategy in groups:
      source = control_of(strategy)
      if source is None or source not in groups or not (groups[strategy]["seeds"]
                                                        and groups[source]["seeds"]):
        continue
      c = compare(task, source, strategy)
      c["primary"] = (task, frozenset((source, strategy))) in declared
      controls.append(c)

  intervals = [iv for e in results["tasks"].values() for st in e["settings"].values()
               for paired in st["paired"].values() for key, iv in paired.items()
               if isinstance(iv, dict) and "includes_zero" in iv
               and iv["includes_zero"] is not None]
  excluding = sum(not iv["includes_zero"] for iv in intervals)
  # Each interval is a 95% one: by chance alone 5% of them exclude 0.
  secondary = {"intervals": len(intervals), "exclude_zero": excluding,
               "expected_by_chance": sum(1 - iv["confidence"] for iv in intervals)}

  tuned = {}
  for task in results["tasks"]:
    if task not in picks:
      continue
    tuned[task] = {}
    for strategy in results["strategies"]:
      of = control_of(strategy)
      p = picks[task].get(of or strategy)
      if p is None:
        continue
      row = {"lr": p["lr"], "complete": p["complete"],
             "grid": p.get("grid", [float(lr) for lr in p["scores"]])}
      for key in ("extensions", "edge", "limit"):
        if key in p:
          row[key] = p[key]
      if of is not None:
        row.update(tuned=False, of=of)
      tuned[task][strategy] = row
  return {"analysis": {"alpha": alpha, "permutations": permutations, "bootstrap": bootstrap,
                       "step_cost": _step_cost_provenance(step_cost) if step_cost else None},
          "primaries": primaries, "controls": controls, "secondary": secondary,
          "tuned_lrs": tuned,
          "cost_ratios": {task: cost_ratios(step_cost, task) for task in results["tasks"]}}


def _step_cost_provenance(step_cost: dict) -> dict:
  """The command(s) and hardware of step_cost.json; `tasks_by_command` when tasks were measured
  by separate commands (older files carry only the top-level command)."""
  by_command: dict = {}
  for task, entry in (step_cost.get("tasks") or {}).items():
    by_command.setdefault(entry.get("command") or step_cost.get("command"), []).append(task)
  return {"command": step_cost.get("command"), "hardware": step_cost.get("hardware"),
          "tasks_by_command": by_command}


def regime_check(suite, results: dict, regime: dict) -> dict:
  """Per task: the tuned baseline against the suite's own reference (`benchmarks.regime`), and
  every run whose final validation loss is above the class-prior loss (memorisation).

  The interval is Wilson's 95% score interval of the baseline's best validation accuracy (mean
  over seeds) on the validation set's size; the task falls short when the reference's accuracy
  lies above it.
  """
  out = {"sklearn": regime.get("sklearn"), "command": regime.get("command"), "tasks": {}}
  for task, entry in results["tasks"].items():
    ref = (regime.get("tasks") or {}).get(task)
    if not ref:
      continue
    setting = plots.analysed_setting(entry)
    base = entry["settings"][setting]["strategies"][suite.baseline]
    acc = base["summary"]["best_val_accuracy"]["mean"]
    n = ref.get("validation_examples")
    low, high = (stats.wilson_interval(acc * n, n) if acc is not None and n
                 else (None, None))
    prior = ref.get("class_prior_loss")
    memorised = []
    for s_name, st in entry["settings"].items():
      for strategy, g in st["strategies"].items():
        for seed, m in g["per_seed"].items():
          if (prior is not None and metrics.finite(m["final_val_loss"])
              and m["final_val_loss"] > prior):
            memorised.append({"setting": s_name, "strategy": strategy, "seed": seed,
                              "final_val_loss": m["final_val_loss"]})
    out["tasks"][task] = {
        "setting": setting, "baseline": suite.baseline, "baseline_best_val_accuracy": acc,
        "interval": [low, high], "interval_method": "Wilson score, 95%",
        "reference_accuracy": ref.get("accuracy"), "reference": ref.get("method"),
        "validation_examples": n, "train_examples": ref.get("train_examples"),
        "falls_short": None if high is None or ref.get("accuracy") is None
        else ref["accuracy"] > high,
        "class_prior_loss": prior, "memorised": memorised}
  return out


def _meta(out: pathlib.Path) -> dict:
  infos = [_read_json(p) for p in sorted(out.glob("*/*/*/*/*/run.json"))]
  infos = [i for i in infos if i]
  starts = sorted(i["start"] for i in infos if i.get("start"))
  ends = sorted(i["end"] for i in infos if i.get("end"))
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
          "commands": _read_json(out / "commands.json") or [],
          "report_commit": records.git_commit()}


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write(out: pathlib.Path, render_plots: bool = True) -> str:
  """Writes REPORT.md, results.json and plots/ into `out`; returns the summary table.

  With `render_plots=False` no PNG is drawn, but results.json and REPORT.md name the plots that
  would be, exactly as with them (a fast rebuild of the figures and tables).
  """
  out = pathlib.Path(out)
  results, runs = collect(out)
  suite = suite_lib.parse((out / "suite.toml").read_text(), out / "suite.toml")
  results["tune_seeds"] = list(suite.tune_seeds)
  plot_files = plots.write_all(results, runs, out / "plots", render=render_plots)
  results["plots"] = plot_files
  (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
  (out / "REPORT.md").write_text(tables.markdown(results, plot_files))
  return "\n\n".join(text for text in (tables.summary_table(results, "untuned"),
                                        tables.summary_table(results, "tuned")) if text)

"""The declared analysis of a comparison: the suite's `[analysis]` applied to its figures.

From `analysis.collect`'s per-task figures: the pre-registered primaries on the suite's declared
metric (`[analysis] metric`, an entry of `benchmarks.catalogue`; `benchmarks.stats`: sign-flip
test, Holm), each adaptive strategy against its controls on the same test, the count of
secondary intervals that exclude 0 against chance, the tuned LRs, time to target from
OUT/step_cost.json (`benchmarks.perf.step_cost`) where it exists, and the regime check from
OUT/regime.json (`benchmarks.regime`).
"""

from typing import Optional

from benchmarks import budgets
from benchmarks import catalogue
from benchmarks import metrics
from benchmarks import stats

STEP_COST = "step_cost.json"
REGIME = "regime.json"


def analysed_setting(entry: dict) -> str:
  """The setting the report analyses for a task's `results["tasks"]` entry: the tuned LRs where
  the task's tuning is complete, else the untuned ones."""
  return "tuned" if "tuned" in entry["settings"] else "untuned"



def cost_ratios(step_cost: dict, task: str) -> Optional[dict]:
  """Per strategy, its compiled step's time over fixed's on the task (from step_cost.json,
  written by `benchmarks.perf.step_cost`); None when not measured."""
  return ((step_cost.get("tasks") or {}).get(task) or {}).get("ratios") or None


def _time_to_target(steps: Optional[float], strategy: str, ratios: Optional[dict]):
  if steps is None or not ratios or not metrics.finite(ratios.get(strategy)):
    return None
  return steps * ratios[strategy]


def analyse(suite, analysis, results: dict, picks: dict, step_cost: dict, control_of) -> dict:
  """The pre-registered primaries with Holm's correction, the secondary count, the tuned LRs.

  `control_of` gives a control's adaptive strategy (None for the others:
  `benchmarks.analysis.control_of`).
  """
  alpha, permutations, bootstrap = analysis.alpha, analysis.permutations, analysis.bootstrap
  metric = catalogue.get(analysis.metric)

  def compare(task, a, b):
    """A vs B on the declared metric: the primaries' test, interval and time to target."""
    entry = results["tasks"][task]
    setting = analysed_setting(entry)
    groups = entry["settings"][setting]["strategies"]
    read = _at_budget(suite, metric, task, a, b)
    (sa, ha), (sb, hb) = censored(groups[a], read), censored(groups[b], read)
    c = stats.paired_comparison(sa, sb, ha, hb, permutations, bootstrap, seed=0,
                                confidence=1 - alpha)
    ratios = cost_ratios(step_cost, task) if metric.in_steps else None
    # The medians of the steps themselves, n.r. ordered last (None when it falls on one).
    med = {name: metrics.median_reached([st[s] for s in c["seeds"]])
           for name, st in ((a, sa), (b, sb))}
    c.update(task=task, a=a, b=b, setting=setting,
             median_steps={"a": med[a], "b": med[b]},
             time_to_target={"a": _time_to_target(med[a], a, ratios),
                             "b": _time_to_target(med[b], b, ratios)},
             cost_ratios=None if ratios is None else {n: ratios.get(n) for n in (a, b)})
    if read is not metric:
      c["budget_epochs"] = min(suite.arm_epochs(task, a), suite.arm_epochs(task, b))
    return c

  primaries = []
  for primary in analysis.primaries:
    task, a, b = primary.task, primary.a, primary.b
    entry = results["tasks"].get(task)
    if entry is None:
      raise ValueError(f"analysis.primaries: task {task!r} is not in the suite")
    groups = entry["settings"][analysed_setting(entry)]["strategies"]
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
    groups = entry["settings"][analysed_setting(entry)]["strategies"]
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
  head = {"alpha": alpha, "permutations": permutations, "bootstrap": bootstrap,
          "step_cost": _step_cost_provenance(step_cost) if step_cost else None}
  if analysis.metric != catalogue.DEFAULT:  # named only where it is not v2's (whose folders
    head["metric"] = analysis.metric        # rebuild exactly)
  return {"analysis": head,
          "primaries": primaries, "controls": controls, "secondary": secondary,
          "tuned_lrs": tuned,
          "cost_ratios": {task: cost_ratios(step_cost, task) for task in results["tasks"]}}


def _at_budget(suite, metric: catalogue.Metric, task: str, a: str, b: str) -> catalogue.Metric:
  """The metric that compares A with B: a budgeted one read at the shorter arm's budget when the
  task declares budgets (a horizon-free arm run to H against `step-e2`: both at 2 epochs)."""
  if not metric.budgeted or not suite.task_budgets(task):
    return metric
  epochs = min(suite.arm_epochs(task, a), suite.arm_epochs(task, b))
  if epochs == suite.task_budgets(task)[-1]:
    return metric  # both at the horizon: each run's own figure
  return budgets.at_budget(metric, epochs)


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
    setting = analysed_setting(entry)
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


def censored(group, metric: catalogue.Metric) -> tuple[dict, dict]:
  """Per seed, the metric's value (None: not reached) and the value a censored run takes (its
  `horizon` figure; None where the metric has none)."""
  values = {s: m.get(metric.name) for s, m in group["per_seed"].items()}
  horizon = {s: m.get(metric.horizon) if metric.horizon else None
             for s, m in group["per_seed"].items()}
  return values, horizon

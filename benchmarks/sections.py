"""REPORT.md's sections of the declared analysis: primaries, controls, secondary, regime check.

Pure functions of the results dict (`benchmarks.declared` computes the figures). The primaries
and the controls are described by the declared metric's catalogue entry (`benchmarks.catalogue`).
"""

from typing import Optional

from benchmarks import catalogue
from benchmarks import cells


def _metric(results: dict) -> catalogue.Metric:
  """The declared metric; results.json names it where it is not steps to target."""
  return catalogue.get(results["analysis"].get("metric", catalogue.DEFAULT))


def _median_header(metric: catalogue.Metric) -> str:
  return f"median diff ({metric.unit})" if metric.unit else "median diff"


def _time(value, ratios) -> str:
  if ratios is None:
    return "not measured"
  return "–" if value is None else f"{value:.0f}"


def _last_column(metric: catalogue.Metric, x: str, y: str) -> Optional[str]:
  """The header of the comparison tables' last column: time to target for a metric counted in
  steps, the budget a budgeted one is read at, none for the others (a loss has no time)."""
  if metric.in_steps:
    return f"time to target {x} / {y}"
  return "read at" if metric.budgeted else None


def _read_at(c: dict, results: dict) -> str:
  """The budget a comparison reads both arms at: the shorter arm's (`budget_epochs`), else the
  task's horizon, its last budget."""
  b = (results["tasks"].get(c["task"]) or {}).get("budgets") or {}
  epochs, steps = b.get("epochs") or [], b.get("steps") or []
  e = c.get("budget_epochs", epochs[-1] if epochs else None)
  if e is None:
    return "the horizon"
  at = f" ({steps[epochs.index(e)]} steps)" if e in epochs and len(steps) == len(epochs) else ""
  return f"{e} epochs{at}"


def _comparison_row(c: dict, metric: catalogue.Metric, results: dict) -> list[str]:
  """A paired comparison's cells (the declared metric's format), from task to p, then time to
  target or the budget it is read at (`_last_column`)."""
  fmt = metric.fmt
  t = c["t_interval"]
  mean = ("–" if t["mean"] is None else fmt.format(t["mean"])
          + ("" if t["half_width"] is None else f" ± {fmt.format(t['half_width'])}"))
  p = "–" if c["p_value"] is None else (f"{c['p_value']:.4g}"
                                        + (" (exact)" if c["exact"] else " (MC)"))
  med = "–" if c["median_difference"] is None else fmt.format(c["median_difference"])
  ratios = c["cost_ratios"]
  row = [c["task"], f"{c['a']} − {c['b']}", c["setting"], str(c["n"]),
         f"{c['reached_a']}/{c['n']}", f"{c['reached_b']}/{c['n']}", med,
         cells.interval(*c["bootstrap_interval"], fmt), mean, p]
  if metric.in_steps:
    return row + [f"{_time(c['time_to_target']['a'], ratios)} / "
                  f"{_time(c['time_to_target']['b'], ratios)}"]
  return row + [_read_at(c, results)] if metric.budgeted else row


def _kinds_text() -> str:
  """What each control kind is, in its own words (`train.control_kinds`)."""
  from train import control_kinds
  return "; ".join(kind.description for kind in control_kinds.kinds())


def controls_section(results: dict) -> list[str]:
  """Each adaptive strategy against its controls, on the primaries' test, uncorrected."""
  metric = _metric(results)
  rows = [_comparison_row(c, metric, results) + ["yes" if c["primary"] else "no"]
          for c in results.get("controls") or []]
  last = _last_column(metric, "X", "control")
  if not rows:
    return []
  conf = round(100 * (1 - results["analysis"]["alpha"]))
  return ["## Adaptive strategies against their controls", "",
          metric.controls_sentence() + "with the primaries' test and intervals. "
          + _kinds_text() + ". Uncorrected p-values: secondary, except where "
          "the pair is also a primary (its Holm-adjusted p is above).", "",
          cells.table(["task", "X − control", "setting", "seeds", "X reached", "control reached",
                       _median_header(metric), f"{conf}% bootstrap", f"mean diff ± {conf}% t",
                       "p (sign-flip, uncorrected)"] + ([last] if last else []) + ["primary"],
                 rows), ""]


def primaries_section(results: dict) -> list[str]:
  """The pre-registered comparisons: the declared metric, sign-flip p, Holm across them."""
  a = results["analysis"]
  prim = results["primaries"]
  metric = _metric(results)
  conf = round(100 * (1 - a["alpha"]))
  lines = ["## Primaries (pre-registered)", "",
           "Declared in the suite file before the evaluation runs. " + metric.primary_sentence()
           + "p: two-sided paired sign-flip permutation test over the seeds (all 2^n sign "
           f"assignments when 2^n ≤ {a['permutations']}, else {a['permutations']} random ones "
           f"from a fixed seed), with Holm's step-down correction across the {len(prim)} "
           f"primaries; a primary is significant when its Holm-adjusted p ≤ {a['alpha']:g}. "
           f"Intervals: {conf}% percentile bootstrap of the median difference "
           f"({a['bootstrap']} resamples, fixed seed) and the {conf}% Student-t interval of the "
           "mean difference. Each comparison uses the tuned LRs where the task's tuning is "
           "complete (setting).", ""]
  rows = []
  for c in prim:
    holm = "–" if c["p_value"] is None else (f"**{c['p_holm']:.4g}**" if c["significant"]
                                             else f"{c['p_holm']:.4g}")
    row = _comparison_row(c, metric, results)
    rows.append(row[:10] + [holm] + row[10:])
  last = _last_column(metric, "A", "B")
  lines += [cells.table(["task", "A − B", "setting", "seeds", "A reached", "B reached",
                         _median_header(metric), f"{conf}% bootstrap",
                         f"mean diff ± {conf}% t", "p (sign-flip)", "p (Holm)"]
                        + ([last] if last else []), rows), ""]
  sc = a.get("step_cost")
  if not metric.in_steps:  # time to target is a count of steps times a step's cost
    return lines
  lines += ["*Time to target* is the median steps to target times each strategy's per-step "
            "cost relative to `fixed`, the compiled train steps timed side by side in one "
            "process (`python -m benchmarks.perf.step_cost`, step_cost.json), in units of "
            "fixed's steps; wall clocks of a shared machine are not compared. "
            + ("Not measured: this folder has no step_cost.json." if not sc else
               _measured_by(sc)), ""]
  return lines


def _measured_by(sc: dict) -> str:
  by = sc.get("tasks_by_command") or {}
  if len(by) > 1:
    text = "Measured by " + "; ".join(f"`{cmd}` ({', '.join(tasks)})" for cmd, tasks in by.items())
  else:
    text = f"Measured by `{sc.get('command')}`"
  kind = (sc.get("hardware") or {}).get("device_kind")
  return text + (f" on {kind}" if kind else "") + "."


def secondary_section(results: dict) -> list[str]:
  sec = results["secondary"]
  lines = ["## Secondary", "",
           "Everything other than the primaries above is secondary: every other pair, the "
           "seed's metrics, time and accuracy. They are not corrected for multiplicity; read "
           f"them against chance. Of the {sec['intervals']} secondary paired 95% intervals in "
           f"this report, **{sec['exclude_zero']}** exclude 0; about "
           f"{sec['expected_by_chance']:.1f} would by chance alone (0.05 × {sec['intervals']}).",
           ""]
  rows = []
  for task, entry in results["tasks"].items():
    if entry["threshold"] is None:
      continue
    for setting, st in entry["settings"].items():
      for strategy, g in st["strategies"].items():
        r = g["reach"].get("steps_to_target")
        if r is None:
          continue
        tt = (results.get("cost_ratios") or {}).get(task)
        ratio = (tt or {}).get(strategy)
        time = ("not measured" if tt is None else "–" if r["median"] is None or ratio is None
                else f"{r['median'] * ratio:.0f}")
        rows.append([task, setting, strategy, cells.reach(r, "{:.0f}"),
                     cells.reach(g["reach"]["examples_to_target"], "{:.0f}"), time])
  if rows:
    lines += ["Steps and examples to target per strategy (reached/n; median, n.r. ordered "
              "last; per seed), and time to target in fixed-step units:", "",
              cells.table(["task", "setting", "strategy", "steps to target", "examples to target",
                           "time to target"], rows), ""]
  tuned = results.get("tuned_lrs") or {}
  rows = []
  for task, per in tuned.items():
    for strategy, t in per.items():
      rows.append([task, strategy, f"{t['lr']:g}",
                   "control of " + t["of"] if t.get("of") else
                   ", ".join(f"{float(x):g}" for x in t.get("grid", [])),
                   str(t.get("extensions", "–")), "yes" if t["complete"] else "no"])
  if rows:
    lines += ["Tuned LRs (controls run at their adaptive strategy's):", "",
              cells.table(["task", "strategy", "tuned lr", "grid", "extensions", "complete"], rows),
              ""]
  return lines


def regime_section(results: dict) -> list[str]:
  reg = results["regime"]
  lines = ["## Regime check", "",
           "Each task's own reference, fitted on the same training subset and scored on the "
           "same validation split as the runs (`python -m benchmarks regime`: TF-IDF 1–2-grams "
           "with logistic regression for text, logistic regression on pixels for images; "
           f"scikit-learn {reg.get('sklearn')}"
           + (f"; `{reg['command']}`" if reg.get("command") else "") + "). The baseline's best "
           "validation accuracy is its mean over seeds, at the tuned LR where tuning is "
           "complete, with the 95% Wilson score interval of a proportion on the validation "
           "set's size; a task **falls short** when the reference lies above that interval. "
           "**Memorisation**: a run whose final validation loss is above the class-prior "
           "loss, the cross-entropy on the validation labels of predicting the training "
           "labels' frequencies.", ""]
  rows, flagged = [], []
  for task, r in reg["tasks"].items():
    short = {None: "–", True: "**yes**", False: "no"}[r["falls_short"]]
    rows.append([task, f"{r['baseline']} ({r['setting']})",
                 cells.num(r["baseline_best_val_accuracy"], "{:.4f}"),
                 cells.interval(*r["interval"], "{:.4f}"),
                 cells.num(r["reference_accuracy"], "{:.4f}"),
                 str(r["validation_examples"]), short, cells.num(r["class_prior_loss"], "{:.4f}"),
                 str(len(r["memorised"]))])
    flagged += [f"- {task} / {m['setting']} / {m['strategy']} / seed {m['seed']}: final "
                f"validation loss {m['final_val_loss']:.4f} > {r['class_prior_loss']:.4f}"
                for m in r["memorised"]]
  lines += [cells.table(["task", "baseline", "best val acc", "95% Wilson", "reference acc",
                         "validation n", "falls short", "class-prior loss", "runs above it"], rows),
            ""]
  if flagged:
    lines += ["Runs flagged for memorisation:", ""] + flagged + [""]
  return lines

"""REPORT.md's text: the tables of a results.json (`report.collect`) and the definitions.

Pure functions of the results dict: the figures are computed by `report`, formatted here.
"""

import math

from benchmarks import metrics

# (key, label, format, higher is better): the per-run figures that get a mean ± CI.
NUMERIC = (
    ("final_val_loss", "final val loss", "{:.4f}", False),
    ("best_val_loss", "best val loss", "{:.4f}", False),
    ("stability", "stability (std val loss, last 5 ep.)", "{:.4f}", False),
    ("final_val_accuracy", "final val acc", "{:.4f}", True),
    ("best_val_accuracy", "best val acc", "{:.4f}", True),
    ("test_accuracy", "test acc", "{:.4f}", True),
    ("test_loss", "test loss", "{:.4f}", False),
    ("train_time_s", "train time (s)", "{:.1f}", False),
    ("train_cpu_s", "train CPU time (s)", "{:.1f}", False),
    ("process_cpu_s", "process CPU time (s)", "{:.1f}", False),
    ("elapsed_s", "wall time incl. compile, eval (s)", "{:.1f}", False),
    ("peak_rss_mb", "peak RSS (MiB)", "{:.0f}", False),
    ("device_memory_mb", "device memory (MiB)", "{:.0f}", False),
)
REACH = (("epochs_to_threshold", "epochs to threshold", "{:.0f}"),
         ("seconds_to_threshold", "train seconds to threshold", "{:.1f}"))
# From evals.jsonl (runs with `eval_every_steps`): the pre-registered metric and its companion.
EVAL_REACH = (("steps_to_target", "steps to target", "{:.0f}"),
              ("examples_to_target", "examples to target", "{:.0f}"))
# From evals.jsonl too: per-run figures with a mean ± CI, where the runs have evaluations.
EVAL_NUMERIC = (("stability_evals", "stability (std val loss, last 5 evaluations)", "{:.4f}",
                 False),)
# The paired table: what a reader weighs a strategy on.
PAIRED = ("final_val_loss", "best_val_loss", "stability", "final_val_accuracy",
          "best_val_accuracy", "test_accuracy", "train_time_s")
_LABEL = {k: label for k, label, *_ in NUMERIC + EVAL_NUMERIC + REACH + EVAL_REACH}
_FMT = {k: fmt for k, _, fmt, *_ in NUMERIC + EVAL_NUMERIC + REACH + EVAL_REACH}
EVAL_REACH = tuple(k for k, *_ in EVAL_REACH)


def _num(value, fmt="{:.4g}") -> str:
  return "–" if value is None or not metrics.finite(value) else fmt.format(value)


def _ci(interval: dict, fmt: str) -> str:
  if interval["n"] == 0:
    return "–"
  if interval["half_width"] is None:
    return f"{fmt.format(interval['mean'])} (n=1)"
  return f"{fmt.format(interval['mean'])} ± {fmt.format(interval['half_width'])}"


def _reach(entry: dict, fmt: str) -> str:
  vals = [("n.r." if v is None else fmt.format(v)) for v in entry["values"].values()]
  med = "–" if entry["median"] is None else fmt.format(entry["median"])
  return f"{entry['reached']}/{entry['n']}; median {med} [{', '.join(vals)}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def summary_table(results: dict, setting: str = "untuned") -> str:
  """The table `compare` prints: per task and strategy, the seed's four metrics."""
  blocks = []
  for task, entry in results["tasks"].items():
    if setting not in entry["settings"]:
      continue
    groups = entry["settings"][setting]["strategies"]
    rows = []
    for strategy, g in groups.items():
      rows.append([strategy, f"{g['lr']:g}", f"{len(g['seeds'])}",
                   _reach(g["reach"]["epochs_to_threshold"], "{:.0f}")
                   if entry["threshold"] else "no threshold",
                   _ci(g["summary"]["stability"], "{:.4f}"),
                   _ci(g["summary"]["final_val_accuracy"], "{:.4f}"),
                   _ci(g["summary"]["test_accuracy"], "{:.4f}"),
                   _ci(g["summary"]["train_time_s"], "{:.1f}"),
                   f"{g['divergences']}"])
    thr = _num(entry["threshold"], "{:.4f}")
    blocks.append(f"{task} ({setting}; val-loss threshold {thr}; mean ± 95% CI over seeds)\n"
                  + _table(["strategy", "lr", "seeds", "reached: epochs to threshold",
                            "stability", "final val acc", "test acc", "train time (s)",
                            "diverged"], rows))
  return "\n\n".join(blocks)


def _paired_table(results: dict, task: str, setting: str) -> str:
  s = results["tasks"][task]["settings"][setting]
  rows = []
  for strategy, paired in s["paired"].items():
    for key in PAIRED:
      iv = paired[key]
      fmt = _FMT[key]
      if iv["n"] == 0:
        continue
      ci = ("–" if iv["half_width"] is None
            else f"[{fmt.format(iv['low'])}, {fmt.format(iv['high'])}]")
      inc = {None: "n/a (1 seed)", True: "yes", False: "**no**"}[iv["includes_zero"]]
      rows.append([strategy, _LABEL[key], f"{iv['n']}", fmt.format(iv["mean"]), ci, inc])
    for key, *_ in REACH:
      w = paired[key]
      if results["tasks"][task]["threshold"] is not None and sum(w.values()):
        rows.append([strategy, _LABEL[key], f"{sum(w.values())}",
                     f"better {w['better']}, tie {w['tie']}, worse {w['worse']}", "–",
                     "(counts, not averaged)"])
    iv = paired.get("steps_to_target_censored")
    if iv and iv["n"] and results["tasks"][task]["threshold"] is not None:
      ci = ("–" if iv["half_width"] is None
            else f"[{iv['low']:.0f}, {iv['high']:.0f}]")
      inc = {None: "n/a (1 seed)", True: "yes", False: "**no**"}[iv["includes_zero"]]
      w = paired["steps_to_target"]
      rows.append([strategy, "steps to target (n.r. at the horizon)", f"{iv['n']}",
                   f"{iv['mean']:.0f} (better {w['better']}, tie {w['tie']}, "
                   f"worse {w['worse']})", ci, inc])
  return _table([f"strategy − {results['baseline']}", "metric", "pairs", "mean difference",
                 "95% CI", "CI includes 0"], rows)


def _full_table(results: dict, task: str, setting: str) -> str:
  groups = results["tasks"][task]["settings"][setting]["strategies"]
  header = ["metric"] + list(groups)
  rows = [["lr"] + [f"{g['lr']:g}" for g in groups.values()],
          ["seeds (missing)"] + [f"{len(g['seeds'])} ({len(g['missing_seeds'])})"
                                 for g in groups.values()],
          ["diverged"] + [str(g["divergences"]) for g in groups.values()]]
  if results["tasks"][task]["threshold"] is not None:
    for key, label, fmt in REACH:
      rows.append([label + " (reached/n; median [per seed])"]
                  + [_reach(g["reach"][key], fmt) for g in groups.values()])
    for key in EVAL_REACH:
      if any(key in g["reach"] for g in groups.values()):
        rows.append([_LABEL[key] + " (reached/n; median [per seed])"]
                    + [_reach(g["reach"][key], "{:.0f}") if key in g["reach"] else "–"
                       for g in groups.values()])
  for key, label, fmt, _ in NUMERIC + EVAL_NUMERIC:
    if all(g["summary"].get(key, {"n": 0})["n"] == 0 for g in groups.values()):
      continue
    rows.append([label] + [_ci(g["summary"][key], fmt) if key in g["summary"] else "–"
                           for g in groups.values()])
  for key in ("final_val_loss", "stability"):
    rows.append([f"{_LABEL[key]}: sd across seeds"]
                + [_num(g["summary"][key]["sd"], "{:.4f}") for g in groups.values()])
  return _table(header, rows)


def _untrained(entry: dict, setting: str) -> bool:
  """A setting without a single run beside one with runs: the untuned LRs of a suite with
  `untuned_runs = false`, which the runner does not train; the report leaves it out."""
  def empty(name):
    return not any(g["seeds"] for g in entry["settings"][name]["strategies"].values())
  return empty(setting) and not all(empty(name) for name in entry["settings"])


def _tuning_cell(p: dict, lr: str) -> str:
  """A grid point's mean best validation loss over the tuning seeds, bold where picked."""
  vals, states = p["scores"][lr], p["states"][lr]
  ok = [v for v in vals if metrics.finite(v)]
  cell = (_num(sum(ok) / len(ok), "{:.4f}") if len(ok) == len(vals) and vals
          else "missing" if "missing" in states else "diverged")
  return f"**{cell}**" if float(lr) == p["lr"] else cell


def _tuning_table(results: dict, task: str) -> str:
  picks = results["tuning"][task]
  grids = {s: list(p["scores"]) for s, p in picks.items()}
  grid = next(iter(grids.values()))
  if all(g == grid for g in grids.values()) and not any("extensions" in p
                                                        for p in picks.values()):
    rows = [[s] + [_tuning_cell(p, lr) for lr in grid]
            + [f"{p['lr']:g}" if p["complete"] else "(incomplete)"] for s, p in picks.items()]
    return _table(["strategy"] + [f"lr {lr}" for lr in grid] + ["picked"], rows)
  # Own grids (prodigy's coefficient, schedule-free's range) and points added beyond an edge.
  rows = []
  for strategy, p in picks.items():
    points = ", ".join(f"{lr}: {_tuning_cell(p, lr)}" for lr in grids[strategy])
    edge = "yes" if p.get("on_edge") else "no"
    rows.append([strategy, points, f"{p['lr']:g}" if p["complete"] else "(incomplete)",
                 str(p.get("extensions", 0)), edge])
  return _table(["strategy", "grid: mean best val loss", "picked", "points added",
                 "still on an edge"], rows)


def _side_by_side(results: dict, task: str) -> str:
  s = results["tasks"][task]["settings"]
  rows = []
  for strategy in s["untuned"]["strategies"]:
    u, t = s["untuned"]["strategies"][strategy], s["tuned"]["strategies"][strategy]
    row = [strategy]
    for g in (u, t):
      row += [f"{g['lr']:g}", _ci(g["summary"]["best_val_loss"], "{:.4f}"),
              _ci(g["summary"]["final_val_accuracy"], "{:.4f}"),
              _reach(g["reach"]["epochs_to_threshold"], "{:.0f}")
              if results["tasks"][task]["threshold"] else "–"]
    rows.append(row)
  return _table(["strategy", "untuned lr", "best val loss", "final val acc", "epochs to thr.",
                 "tuned lr", "best val loss", "final val acc", "epochs to thr."], rows)


def markdown(results: dict, plot_files: dict[str, list[str]]) -> str:
  meta = results["meta"]
  n = len(results["seeds"])
  lines = [f"# Benchmark report: suite `{results['suite']}`", ""]
  if results["description"]:
    lines += [results["description"], ""]
  lines += ["## How these figures were made", ""]
  for c in meta["commands"]:
    lines.append(f"- `{c['command']}` ({c['date']}, commit "
                 f"{(c.get('git') or {}).get('commit') or 'unknown'})")
  lines += [f"- Report written {meta['report_date']}; runs from {meta['first_start']} to "
            f"{meta['last_end']} ({meta['runs_found']} run folders).",
            f"- Git commit(s) of the runs: {', '.join(meta['commits'])}"
            + (" (some with uncommitted changes)" if meta["any_dirty"] else "") + "."]
  for hw in meta["hardware"]:
    lines.append(f"- Hardware: {hw.get('device_count')} × {hw.get('device_kind')} "
                 f"({hw.get('platform')}), CPU {hw.get('cpu')}"
                 + (f" ({hw['cpu_id']}, flags {hw.get('cpu_flags_sha1')})" if hw.get("cpu_id")
                    else "")
                 + f", {hw.get('cpus_usable')} usable "
                 f"of {hw.get('cpu_cores')} cores, host {hw.get('host')}, "
                 f"Python {hw.get('python')}, jax {hw.get('jax')}.")
  if meta["load_avg_1m_at_start"]:
    load = meta["load_avg_1m_at_start"]
    lines.append(f"- 1-minute load average when runs started: {load['min']}–{load['max']} "
                 "(other work on the machine slows the time figures).")
  for v in meta["versions"]:
    lines.append("- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
  lines += ["", "## Definitions", "",
            f"- Seeds {results['seeds']}, the same for every strategy, so differences are "
            f"paired by seed. Baseline: `{results['baseline']}`.",
            "- **Threshold**: fixed before the comparison by `python -m benchmarks calibrate`: "
            + (results["calibration"].get("rule", "not calibrated") if results["calibration"]
               else "not calibrated, so convergence speed is not reported")
            + (f" (reference seeds {results['calibration']['reference_seeds']}, strategy "
               f"`{results['calibration'].get('strategy', results['baseline'])}`)"
               if "reference_seeds" in results["calibration"] else "") + ".",
            "- **Epochs / train seconds to threshold**: the first epoch whose validation loss is "
            "at or below the threshold, and the training clock (evaluation excluded) up to its "
            "end. A run that never gets there is *n.r.* (not reached): it is counted (reached/n) "
            "and shown per seed, never averaged; the median orders it after every reached "
            "value and is '–' when it falls on one.",
            "- **Stability**: population std of the validation loss over the last 5 epochs of a "
            "run (all its epochs if it has fewer), then mean ± CI over seeds. The sd across "
            "seeds of the final validation loss and of the stability is given as well.",
            "- **Diverged**: a non-finite loss, or an epoch's training loss above "
            "the suite's explode_factor times the first epoch's.",
            "- **Accuracy**: final and best validation accuracy over the epochs; test accuracy of "
            "the final parameters.",
            "- **Resources**: training time (the training clock), its CPU time, the whole "
            "process's CPU time (one process per run), peak resident memory, and device memory "
            "where the backend reports it.",
            f"- **Statistics**: mean ± half-width of the 95% Student-t interval over seeds "
            f"(sample sd, n-1 degrees of freedom). With {n} seeds the half-width is "
            + (f"{metrics.t_critical(n) / math.sqrt(n):.2f} standard deviations"
               if n >= 2 else "undefined (1 seed: no interval)")
            + ("" if n == 3 else " (with 3 seeds, about 2.5 sd)")
            + ": intervals are wide, and a difference whose "
            "interval includes 0 is not shown to exist. Paired differences are per seed "
            f"(strategy − {results['baseline']}), then mean ± CI.", ""]
  if "primaries" in results:
    lines += primaries_section(results) + controls_section(results) + secondary_section(results)
  if "regime" in results:
    lines += regime_section(results)
  secondary = " — secondary" if "primaries" in results else ""
  for task, entry in results["tasks"].items():
    lines += [f"## {task}", "",
              f"Validation-loss threshold: {_num(entry['threshold'], '{:.4f}')}.", ""]
    for setting in entry["settings"]:
      if _untrained(entry, setting):
        continue
      lines += [f"### {setting.capitalize()}"
                + (" (the suite's LR for every strategy)" if setting == "untuned" else
                   " (each strategy at the LR its tuning picked)") + secondary, "",
                _full_table(results, task, setting), "",
                f"Paired differences against `{results['baseline']}`:", "",
                _paired_table(results, task, setting), ""]
    if task in results["tuning"]:
      lines += ["### Tuning", "",
                "Mean best validation loss on the tuning seeds "
                f"{results.get('tune_seeds', '')} per LR (bold: picked). The evaluation seeds "
                "are not used for the pick.", "", _tuning_table(results, task), ""]
      if "untuned" not in entry["settings"] or _untrained(entry, "untuned"):
        pass  # tuned runs only: nothing to set beside them
      elif "tuned" in entry["settings"]:
        lines += ["Untuned and tuned side by side:", "", _side_by_side(results, task), ""]
      else:
        lines += ["Tuning is incomplete (some tuning runs are missing), so no tuned results "
                  "are shown.", ""]
    if plot_files.get(task):
      lines += [f"![{p}](plots/{p})" for p in plot_files[task]] + [""]
  missing = [(task, setting, s, g["missing_seeds"]) for task, e in results["tasks"].items()
             for setting, v in e["settings"].items() for s, g in v["strategies"].items()
             if g["missing_seeds"] and not _untrained(e, setting)]
  if missing:
    lines += ["## Missing runs", "", "Not finished (yet), so not in the figures above:", ""]
    lines += [f"- {t} / {st} / {s}: seeds {m}" for t, st, s, m in missing] + [""]
  return "\n".join(lines)


def _interval(low, high, fmt="{:.0f}") -> str:
  return "–" if low is None or high is None else f"[{fmt.format(low)}, {fmt.format(high)}]"


def _time(value, ratios) -> str:
  if ratios is None:
    return "not measured"
  return "–" if value is None else f"{value:.0f}"


def _comparison_row(c: dict) -> list[str]:
  """A paired steps-to-target comparison's cells, from task to p and time to target."""
  t = c["t_interval"]
  mean = ("–" if t["mean"] is None else f"{t['mean']:.0f}"
          + ("" if t["half_width"] is None else f" ± {t['half_width']:.0f}"))
  p = "–" if c["p_value"] is None else (f"{c['p_value']:.4g}"
                                        + (" (exact)" if c["exact"] else " (MC)"))
  med = "–" if c["median_difference"] is None else f"{c['median_difference']:.0f}"
  ratios = c["cost_ratios"]
  return [c["task"], f"{c['a']} − {c['b']}", c["setting"], str(c["n"]),
          f"{c['reached_a']}/{c['n']}", f"{c['reached_b']}/{c['n']}", med,
          _interval(*c["bootstrap_interval"]), mean, p,
          f"{_time(c['time_to_target']['a'], ratios)} / "
          f"{_time(c['time_to_target']['b'], ratios)}"]


def _kinds_text() -> str:
  """What each control kind is, in its own words (`train.control_kinds`)."""
  from train import control_kinds
  return "; ".join(kind.description for kind in control_kinds.kinds())


def controls_section(results: dict) -> list[str]:
  """Each adaptive strategy against its controls, on the primaries' test, uncorrected."""
  rows = [_comparison_row(c) + ["yes" if c["primary"] else "no"]
          for c in results.get("controls") or []]
  if not rows:
    return []
  conf = round(100 * (1 - results["analysis"]["alpha"]))
  return ["## Adaptive strategies against their controls", "",
          "Steps to the target, X − control per seed (negative: the adaptive strategy needs "
          "fewer steps), with the primaries' test and intervals. " + _kinds_text() + ". "
          "Uncorrected p-values: secondary, except where "
          "the pair is also a primary (its Holm-adjusted p is above).", "",
          _table(["task", "X − control", "setting", "seeds", "X reached", "control reached",
                  "median diff (steps)", f"{conf}% bootstrap", f"mean diff ± {conf}% t",
                  "p (sign-flip, uncorrected)", "time to target X / control", "primary"],
                 rows), ""]


def primaries_section(results: dict) -> list[str]:
  """The pre-registered comparisons: steps to target, sign-flip p, Holm across them."""
  a = results["analysis"]
  prim = results["primaries"]
  conf = round(100 * (1 - a["alpha"]))
  lines = ["## Primaries (pre-registered)", "",
           "Declared in the suite file before the evaluation runs. Metric: **steps to the target "
           "validation loss** (the calibrated threshold), from the evaluations in evals.jsonl. "
           "A run that never reaches the target (*n.r.*) takes its horizon, the run's total "
           "steps. Difference A − B per seed, paired by seed (negative: A needs fewer steps). "
           "p: two-sided paired sign-flip permutation test over the seeds (all 2^n sign "
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
    row = _comparison_row(c)
    rows.append(row[:-1] + [holm, row[-1]])
  lines += [_table(["task", "A − B", "setting", "seeds", "A reached", "B reached",
                    "median diff (steps)", f"{conf}% bootstrap", f"mean diff ± {conf}% t",
                    "p (sign-flip)", "p (Holm)", "time to target A / B"], rows), ""]
  sc = a.get("step_cost")
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
        rows.append([task, setting, strategy, _reach(r, "{:.0f}"),
                     _reach(g["reach"]["examples_to_target"], "{:.0f}"), time])
  if rows:
    lines += ["Steps and examples to target per strategy (reached/n; median, n.r. ordered "
              "last; per seed), and time to target in fixed-step units:", "",
              _table(["task", "setting", "strategy", "steps to target", "examples to target",
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
              _table(["task", "strategy", "tuned lr", "grid", "extensions", "complete"], rows),
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
                 _num(r["baseline_best_val_accuracy"], "{:.4f}"),
                 _interval(*r["interval"], "{:.4f}"), _num(r["reference_accuracy"], "{:.4f}"),
                 str(r["validation_examples"]), short, _num(r["class_prior_loss"], "{:.4f}"),
                 str(len(r["memorised"]))])
    flagged += [f"- {task} / {m['setting']} / {m['strategy']} / seed {m['seed']}: final "
                f"validation loss {m['final_val_loss']:.4f} > {r['class_prior_loss']:.4f}"
                for m in r["memorised"]]
  lines += [_table(["task", "baseline", "best val acc", "95% Wilson", "reference acc",
                    "validation n", "falls short", "class-prior loss", "runs above it"], rows),
            ""]
  if flagged:
    lines += ["Runs flagged for memorisation:", ""] + flagged + [""]
  return lines

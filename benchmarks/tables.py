"""REPORT.md's text: the tables of a results.json (`analysis.collect`) and the definitions.

Pure functions of the results dict: the figures are computed by `analysis` and `declared`,
formatted here; `sections` holds the declared analysis's sections and `cells` the cells.
"""

import math

from benchmarks import catalogue
from benchmarks import cells
from benchmarks import metrics
from benchmarks import sections


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
                   cells.reach(g["reach"]["epochs_to_threshold"], "{:.0f}")
                   if entry["threshold"] else "no threshold",
                   cells.ci(g["summary"]["stability"], "{:.4f}"),
                   cells.ci(g["summary"]["final_val_accuracy"], "{:.4f}"),
                   cells.ci(g["summary"]["test_accuracy"], "{:.4f}"),
                   cells.ci(g["summary"]["train_time_s"], "{:.1f}"),
                   f"{g['divergences']}"])
    thr = cells.num(entry["threshold"], "{:.4f}")
    blocks.append(f"{task} ({setting}; val-loss threshold {thr}; mean ± 95% CI over seeds)\n"
                  + cells.table(["strategy", "lr", "seeds", "reached: epochs to threshold",
                                 "stability", "final val acc", "test acc", "train time (s)",
                                 "diverged"], rows))
  return "\n\n".join(blocks)


def _paired_table(results: dict, task: str, setting: str) -> str:
  s = results["tasks"][task]["settings"][setting]
  rows = []
  for strategy, paired in s["paired"].items():
    for m in catalogue.of_kind("numeric"):
      iv, fmt = paired.get(m.name), m.fmt
      if not m.paired or iv is None or iv["n"] == 0:
        continue
      ci = ("–" if iv["half_width"] is None
            else f"[{fmt.format(iv['low'])}, {fmt.format(iv['high'])}]")
      inc = {None: "n/a (1 seed)", True: "yes", False: "**no**"}[iv["includes_zero"]]
      rows.append([strategy, m.label, f"{iv['n']}", fmt.format(iv["mean"]), ci, inc])
    for m in catalogue.of_kind("reach"):
      w = paired.get(m.name)
      if (m.paired and not m.horizon and w is not None
          and results["tasks"][task]["threshold"] is not None and sum(w.values())):
        rows.append([strategy, m.label, f"{sum(w.values())}",
                     f"better {w['better']}, tie {w['tie']}, worse {w['worse']}", "–",
                     "(counts, not averaged)"])
    for m in catalogue.of_kind("reach"):  # with a horizon: censored runs take it
      iv = paired.get(f"{m.name}_censored")
      if not (m.horizon and iv and iv["n"] and results["tasks"][task]["threshold"] is not None):
        continue
      fmt = m.fmt
      ci = ("–" if iv["half_width"] is None
            else f"[{fmt.format(iv['low'])}, {fmt.format(iv['high'])}]")
      inc = {None: "n/a (1 seed)", True: "yes", False: "**no**"}[iv["includes_zero"]]
      w = paired[m.name]
      rows.append([strategy, f"{m.label} (n.r. at the horizon)", f"{iv['n']}",
                   f"{fmt.format(iv['mean'])} (better {w['better']}, tie {w['tie']}, "
                   f"worse {w['worse']})", ci, inc])
  return cells.table([f"strategy − {results['baseline']}", "metric", "pairs", "mean difference",
                      "95% CI", "CI includes 0"], rows)


def _full_table(results: dict, task: str, setting: str) -> str:
  groups = results["tasks"][task]["settings"][setting]["strategies"]
  header = ["metric"] + list(groups)
  rows = [["lr"] + [f"{g['lr']:g}" for g in groups.values()],
          ["seeds (missing)"] + [f"{len(g['seeds'])} ({len(g['missing_seeds'])})"
                                 for g in groups.values()],
          ["diverged"] + [str(g["divergences"]) for g in groups.values()]]
  if results["tasks"][task]["threshold"] is not None:
    for m in catalogue.of_kind("reach"):  # evals.jsonl's and registered ones where runs have them
      if m.always or any(m.name in g["reach"] for g in groups.values()):
        rows.append([m.label + " (reached/n; median [per seed])"]
                    + [cells.reach(g["reach"][m.name], m.fmt) if m.name in g["reach"] else "–"
                       for g in groups.values()])
  for m in catalogue.of_kind("numeric"):
    if all(g["summary"].get(m.name, {"n": 0})["n"] == 0 for g in groups.values()):
      continue
    rows.append([m.label] + [cells.ci(g["summary"][m.name], m.fmt) if m.name in g["summary"]
                             else "–" for g in groups.values()])
  for key in ("final_val_loss", "stability"):
    rows.append([f"{catalogue.label(key)}: sd across seeds"]
                + [cells.num(g["summary"][key]["sd"], "{:.4f}") for g in groups.values()])
  return cells.table(header, rows)


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
  cell = (cells.num(sum(ok) / len(ok), "{:.4f}") if len(ok) == len(vals) and vals
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
    return cells.table(["strategy"] + [f"lr {lr}" for lr in grid] + ["picked"], rows)
  # Own grids (prodigy's coefficient, schedule-free's range) and points added beyond an edge.
  rows = []
  for strategy, p in picks.items():
    points = ", ".join(f"{lr}: {_tuning_cell(p, lr)}" for lr in grids[strategy])
    edge = "yes" if p.get("on_edge") else "no"
    rows.append([strategy, points, f"{p['lr']:g}" if p["complete"] else "(incomplete)",
                 str(p.get("extensions", 0)), edge])
  return cells.table(["strategy", "grid: mean best val loss", "picked", "points added",
                      "still on an edge"], rows)


def _side_by_side(results: dict, task: str) -> str:
  s = results["tasks"][task]["settings"]
  rows = []
  for strategy in s["untuned"]["strategies"]:
    u, t = s["untuned"]["strategies"][strategy], s["tuned"]["strategies"][strategy]
    row = [strategy]
    for g in (u, t):
      row += [f"{g['lr']:g}", cells.ci(g["summary"]["best_val_loss"], "{:.4f}"),
              cells.ci(g["summary"]["final_val_accuracy"], "{:.4f}"),
              cells.reach(g["reach"]["epochs_to_threshold"], "{:.0f}")
              if results["tasks"][task]["threshold"] else "–"]
    rows.append(row)
  return cells.table(["strategy", "untuned lr", "best val loss", "final val acc", "epochs to thr.",
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
    lines += (sections.primaries_section(results) + sections.controls_section(results)
              + sections.secondary_section(results))
  if "regime" in results:
    lines += sections.regime_section(results)
  secondary = " — secondary" if "primaries" in results else ""
  for task, entry in results["tasks"].items():
    lines += [f"## {task}", "",
              f"Validation-loss threshold: {cells.num(entry['threshold'], '{:.4f}')}.", ""]
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

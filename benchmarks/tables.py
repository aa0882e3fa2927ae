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
# The paired table: what a reader weighs a strategy on.
PAIRED = ("final_val_loss", "best_val_loss", "stability", "final_val_accuracy",
          "best_val_accuracy", "test_accuracy", "train_time_s")
_LABEL = {k: label for k, label, *_ in NUMERIC + REACH}
_FMT = {k: fmt for k, _, fmt, *_ in NUMERIC + REACH}


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
  for key, label, fmt, _ in NUMERIC:
    if all(g["summary"][key]["n"] == 0 for g in groups.values()):
      continue
    rows.append([label] + [_ci(g["summary"][key], fmt) for g in groups.values()])
  for key in ("final_val_loss", "stability"):
    rows.append([f"{_LABEL[key]}: sd across seeds"]
                + [_num(g["summary"][key]["sd"], "{:.4f}") for g in groups.values()])
  return _table(header, rows)


def _tuning_table(results: dict, task: str) -> str:
  picks = results["tuning"][task]
  grid = list(next(iter(picks.values()))["scores"])
  rows = []
  for strategy, p in picks.items():
    cells = []
    for lr in grid:
      vals = p["scores"][lr]
      ok = [v for v in vals if metrics.finite(v)]
      states = p["states"][lr]
      cell = (_num(sum(ok) / len(ok), "{:.4f}") if len(ok) == len(vals) and vals
              else "missing" if "missing" in states else "diverged")
      cells.append(f"**{cell}**" if float(lr) == p["lr"] else cell)
    rows.append([strategy] + cells + [f"{p['lr']:g}" if p["complete"] else "(incomplete)"])
  return _table(["strategy"] + [f"lr {lr}" for lr in grid] + ["picked"], rows)


def _side_by_side(results: dict, task: str) -> str:
  s = results["tasks"][task]["settings"]
  rows = []
  for strategy in results["strategies"]:
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
                 f"({hw.get('platform')}), CPU {hw.get('cpu')}, {hw.get('cpus_usable')} usable "
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
  for task, entry in results["tasks"].items():
    lines += [f"## {task}", "",
              f"Validation-loss threshold: {_num(entry['threshold'], '{:.4f}')}.", ""]
    for setting in entry["settings"]:
      lines += [f"### {setting.capitalize()}"
                + (" (the suite's LR for every strategy)" if setting == "untuned" else
                   " (each strategy at the LR its tuning picked)"), "",
                _full_table(results, task, setting), "",
                f"Paired differences against `{results['baseline']}`:", "",
                _paired_table(results, task, setting), ""]
    if task in results["tuning"]:
      lines += ["### Tuning", "",
                "Mean best validation loss on the tuning seeds "
                f"{results.get('tune_seeds', '')} per LR (bold: picked). The evaluation seeds "
                "are not used for the pick.", "", _tuning_table(results, task), ""]
      if "tuned" in entry["settings"]:
        lines += ["Untuned and tuned side by side:", "", _side_by_side(results, task), ""]
      else:
        lines += ["Tuning is incomplete (some tuning runs are missing), so no tuned results "
                  "are shown.", ""]
    if plot_files.get(task):
      lines += [f"![{p}](plots/{p})" for p in plot_files[task]] + [""]
  missing = [(task, setting, s, g["missing_seeds"]) for task, e in results["tasks"].items()
             for setting, v in e["settings"].items() for s, g in v["strategies"].items()
             if g["missing_seeds"]]
  if missing:
    lines += ["## Missing runs", "", "Not finished (yet), so not in the figures above:", ""]
    lines += [f"- {t} / {st} / {s}: seeds {m}" for t, st, s, m in missing] + [""]
  return "\n".join(lines)

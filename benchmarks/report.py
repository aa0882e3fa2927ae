"""REPORT.md, results.json and plots of a comparison folder, from the run records alone.

`write(out)` can be rerun at any time (`python -m benchmarks report DIR`): it reads DIR/suite.toml
and every run folder, trains nothing, and covers the runs found, listing the missing ones.
"""

import dataclasses
import json
import math
import pathlib
import platform
from typing import Any, Optional

from benchmarks import metrics
from benchmarks import plots
from benchmarks import suite as suite_lib
from train import records

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


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  try:
    lines = path.read_text().splitlines()
  except OSError:
    return []
  rows = []
  for line in lines:
    try:
      rows.append(json.loads(line))
    except ValueError:
      break  # a line cut short by an interruption
  return rows


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
  epochs: list
  steps: list
  bench: dict

  @property
  def finished(self) -> bool:
    return bool(self.info.get("end"))

  def metrics(self, threshold: Optional[float], explode_factor: float = 2.0) -> dict:
    return metrics.run_metrics(self.epochs, self.steps, self.info.get("test"), threshold,
                               explode_factor, self.bench, self.info.get("compile_s"))


def read_run(workdir: pathlib.Path) -> RunRecord:
  return RunRecord(workdir, _read_json(workdir / "run.json"),
                   _read_jsonl(workdir / "epochs.jsonl"), _read_jsonl(workdir / "steps.jsonl"),
                   _read_json(workdir / "bench.json"))


def _finished(out: pathlib.Path, run: suite_lib.Run) -> Optional[RunRecord]:
  record = read_run(out / run.relpath())
  return record if record.finished else None


def tuning_selection(suite: suite_lib.Suite, out: pathlib.Path) -> dict:
  """Per tuned task and strategy: the LR grid's scores on the tuning seeds and the pick.

  Score: mean over the tuning seeds of the best validation loss; a diverged run scores +inf. The
  evaluation seeds take no part, so the selection does not leak into the comparison. A pick is
  `complete` only when every tuning run of the strategy has finished; the runner trains, and
  the report shows, tuned results only for complete picks.
  """
  picks = {}
  for task in suite.tune_tasks:
    picks[task] = {}
    for strategy in suite.strategies:
      scores, states = {}, {}
      for lr in suite.lr_grid:
        values, state = [], []
        for seed in suite.tune_seeds:
          rec = _finished(out, suite.run(task, strategy, seed, lr=lr, kind="tune"))
          m = rec.metrics(None, suite.explode_factor) if rec else None
          state.append("missing" if m is None else "diverged" if m["diverged"] else "ok")
          values.append(m["best_val_loss"] if state[-1] == "ok" else None)
        scores[lr], states[f"{lr:g}"] = values, state
      picks[task][strategy] = {"lr": metrics.select_lr(scores),
                               "scores": {f"{lr:g}": v for lr, v in scores.items()},
                               "states": states,
                               "complete": all(x != "missing" for st in states.values()
                                               for x in st)}
  return picks


def _group(suite, out, task, strategy, lr, threshold) -> dict:
  """One strategy's runs at one LR over the evaluation seeds, with their statistics."""
  per_seed, records_ = {}, {}
  for seed in suite.seeds:
    rec = _finished(out, suite.run(task, strategy, seed, lr=lr))
    if rec is not None:
      per_seed[seed] = rec.metrics(threshold, suite.explode_factor)
      records_[seed] = rec
  group = {"lr": lr, "seeds": sorted(per_seed), "missing_seeds": [s for s in suite.seeds
                                                                  if s not in per_seed],
           "per_seed": per_seed, "summary": {}, "reach": {},
           "divergences": sum(m["diverged"] for m in per_seed.values())}
  for key, *_ in NUMERIC:
    group["summary"][key] = metrics.t_interval(m[key] for m in per_seed.values()).to_json()
  for key, *_ in REACH:
    values = [per_seed[s][key] for s in sorted(per_seed)]
    group["reach"][key] = {"values": {s: per_seed[s][key] for s in sorted(per_seed)},
                           "reached": metrics.reached_count(values), "n": len(values),
                           "median": metrics.median_reached(values) if threshold else None}
  return group, records_


def _paired(group, base) -> dict:
  out = {}
  for key in PAIRED:
    a = {s: m[key] for s, m in group["per_seed"].items()}
    b = {s: m[key] for s, m in base["per_seed"].items()}
    out[key] = metrics.paired_interval(a, b).to_json()
  for key, *_ in REACH:
    a = group["reach"][key]["values"]
    b = base["reach"][key]["values"]
    out[key] = metrics.paired_wins(a, b)
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
    entry = {"threshold": threshold, "settings": {}}
    settings = {"untuned": {s: suite.task_lr(task) for s in suite.strategies}}
    if task in picks and all(p["complete"] for p in picks[task].values()):
      settings["tuned"] = {s: picks[task][s]["lr"] for s in suite.strategies}
    for setting, lrs in settings.items():
      groups = {}
      for strategy in suite.strategies:
        groups[strategy], recs = _group(suite, out, task, strategy, lrs[strategy], threshold)
        for seed, rec in recs.items():
          runs[(setting, task, strategy, seed)] = rec
      base = groups[suite.baseline]
      paired = {s: _paired(g, base) for s, g in groups.items() if s != suite.baseline}
      entry["settings"][setting] = {"strategies": groups, "paired": paired}
    results["tasks"][task] = entry
  return results, runs


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


# ---------------------------------------------------------------------------------------------
# Formatting


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


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write(out: pathlib.Path) -> str:
  """Writes REPORT.md, results.json and plots/ into `out`; returns the summary table."""
  out = pathlib.Path(out)
  results, runs = collect(out)
  suite = suite_lib.parse((out / "suite.toml").read_text(), out / "suite.toml")
  results["tune_seeds"] = list(suite.tune_seeds)
  plot_files = plots.write_all(results, runs, out / "plots")
  results["plots"] = plot_files
  (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
  (out / "REPORT.md").write_text(markdown(results, plot_files))
  text = summary_table(results, "untuned")
  if any("tuned" in e["settings"] for e in results["tasks"].values()):
    text += "\n\n" + summary_table(results, "tuned")
  return text

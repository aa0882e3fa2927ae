"""REPORT.md, results.json and plots of a comparison folder, from the run records alone.

`write(out)` can be rerun at any time (`python -m benchmarks report DIR`): it reads DIR/suite.toml
and every run folder, trains nothing, and covers the runs found, listing the missing ones.
This module computes the figures (results.json's content); `tables` formats REPORT.md.
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
from benchmarks import tables
from benchmarks import tuning
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

  @property
  def finished(self) -> bool:
    return bool(self.info.get("end"))

  def metrics(self, threshold: Optional[float], explode_factor: float = 2.0) -> dict:
    return metrics.run_metrics(self.epochs, self.steps, self.info.get("test"), threshold,
                               explode_factor, self.bench, self.info.get("compile_s"))


def read_run(workdir: pathlib.Path, info: Optional[dict] = None) -> RunRecord:
  """A run folder's records; `info` is its run.json where the caller has read it already."""
  info = _read_json(workdir / records.RUN_INFO) if info is None else info
  records.schema_version(info, workdir / records.RUN_INFO)
  return RunRecord(workdir, info, records.read_epochs(workdir / "epochs.jsonl", missing_ok=True),
                   records.read_steps(workdir / "steps.jsonl", missing_ok=True),
                   _read_json(workdir / "bench.json"))


def _finished(out: pathlib.Path, run: suite_lib.Run) -> Optional[RunRecord]:
  # run.json first: the rows of an unfinished run (maybe being written) are not read.
  info = _read_json(out / run.relpath() / records.RUN_INFO)
  return read_run(out / run.relpath(), info) if info.get("end") else None


def tuning_selection(suite: suite_lib.Suite, out: pathlib.Path) -> dict:
  """v1's selection (initial grid, no extensions); the bracketed one is `tuning.selection`."""
  return tuning.v1_selection(suite, out)


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
  for key, *_ in tables.NUMERIC:
    group["summary"][key] = metrics.t_interval(m[key] for m in per_seed.values()).to_json()
  for key, *_ in tables.REACH:
    values = [per_seed[s][key] for s in sorted(per_seed)]
    group["reach"][key] = {"values": {s: per_seed[s][key] for s in sorted(per_seed)},
                           "reached": metrics.reached_count(values), "n": len(values),
                           "median": metrics.median_reached(values) if threshold else None}
  return group, records_


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
  text = tables.summary_table(results, "untuned")
  if any("tuned" in e["settings"] for e in results["tasks"].values()):
    text += "\n\n" + tables.summary_table(results, "tuned")
  return text

"""REPORT.md, results.json and plots of a comparison folder, from the run records alone.

`write(out)` can be rerun at any time (`python -m benchmarks report DIR`): it reads DIR/suite.toml
and every run folder, trains nothing, and covers the runs found, listing the missing ones.
The figures (results.json's content) are computed by `benchmarks.analysis` (per strategy) and
`benchmarks.declared` (the suite's `[analysis]`); `tables` and `sections` format REPORT.md and
`plots` draws the figures, from those figures alone.
"""

import json
import math
import pathlib
from typing import Any

from benchmarks import analysis
from benchmarks import plots
from benchmarks import suite as suite_lib
from benchmarks import tables


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
  results, runs = analysis.collect(out)
  suite = suite_lib.parse((out / "suite.toml").read_text(), out / "suite.toml")
  results["tune_seeds"] = list(suite.tune_seeds)
  plot_files = plots.write_all(results, runs, out / "plots", render=render_plots)
  results["plots"] = plot_files
  (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
  (out / "REPORT.md").write_text(tables.markdown(results, plot_files))
  return "\n\n".join(text for text in (tables.summary_table(results, "untuned"),
                                        tables.summary_table(results, "tuned")) if text)

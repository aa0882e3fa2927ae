"""The metric catalogue, the run-folder type and the layers of benchmarks/.

A metric registered from this file alone must be computed per run, shown in REPORT.md, and, when
a suite declares it, be what the primaries test; an unknown one fails when the suite loads.
"""

import ast
import json
import pathlib

import pytest
import test_bench_analysis as synthetic
from test_bench_report import write_run

from benchmarks import catalogue
from benchmarks import metrics
from benchmarks import report
from benchmarks import runs
from benchmarks import suite as suite_lib

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
# Last validation accuracy of each run, the new metric's hand values (higher is better).
FINAL_ACC = {k: round(v, 6) for k, v in synthetic.ACC.items()}


@pytest.fixture
def last_accuracy():
  metric = catalogue.register(catalogue.Metric(
      "last_val_acc", "last validation accuracy", "{:.3f}", higher_is_better=True,
      compute=lambda run, threshold: run.epochs[-1].val_accuracy if run.epochs else None))
  yield metric
  catalogue.unregister(metric.name)
  assert "last_val_acc" not in catalogue.names()


def test_register_is_metrics_register_and_refuses_a_second_entry(last_accuracy):
  assert metrics.register is catalogue.register
  with pytest.raises(ValueError, match="'last_val_acc' is already in the catalogue"):
    catalogue.register(last_accuracy)
  with pytest.raises(ValueError, match="Metric.kind: must be one of numeric, reach"):
    catalogue.Metric("x", "x", kind="mean")


def test_an_unknown_metric_fails_at_load_naming_it():
  text = synthetic.SUITE.replace('metric = "steps_to_target"', 'metric = "last_val_acc"')
  with pytest.raises(ValueError) as info:
    suite_lib.parse(text, pathlib.Path("x.toml"))
  assert "x.toml: analysis.metric: unknown metric 'last_val_acc'" in str(info.value)


def test_a_registered_metric_is_computed_shown_and_tested(tmp_path, last_accuracy):
  out = synthetic.make_out(tmp_path)
  text = synthetic.SUITE.replace('metric = "steps_to_target"', 'metric = "last_val_acc"')
  (out / "suite.toml").write_text(text)
  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  groups = results["tasks"]["rt_sentiment"]["settings"]["untuned"]["strategies"]
  for (strategy, seed), acc in FINAL_ACC.items():
    assert groups[strategy]["per_seed"][str(seed)]["last_val_acc"] == pytest.approx(acc)
  assert groups["gradvar"]["summary"]["last_val_acc"]["mean"] == pytest.approx(
      (0.85 + 0.86 + 0.90) / 3)
  assert results["analysis"]["metric"] == "last_val_acc"
  first = results["primaries"][0]
  assert (first["a"], first["b"]) == ("gradvar", "fixed")
  # gradvar - fixed per seed, on the declared metric (not on steps to target).
  assert first["differences"] == pytest.approx({"0": 0.05, "1": 0.04, "2": 0.06})
  assert first["time_to_target"] == {"a": None, "b": None}  # not a count of steps
  md = (out / "REPORT.md").read_text()
  assert "Metric: **last validation accuracy**" in md
  assert "| last validation accuracy |" in md


def test_the_default_metric_keeps_results_json_as_before(tmp_path):
  out = synthetic.make_out(tmp_path)
  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  assert "metric" not in results["analysis"]  # the committed v2 folders rebuild exactly
  assert "Metric: **steps to the target validation loss**" in (out / "REPORT.md").read_text()


def test_run_states(tmp_path):
  assert runs.state(tmp_path / "none") == runs.ABSENT
  failed = tmp_path / "failed"
  write_run(failed, [0.5], end=False)
  assert runs.state(failed) == runs.FAILED and runs.read_finished(failed) is None
  stopped = tmp_path / "stopped"
  write_run(stopped, [0.5], end=False)
  info = json.loads((stopped / runs.RUN_INFO).read_text())
  (stopped / runs.RUN_INFO).write_text(json.dumps({**info, "stopped": {"reason": "SIGTERM"}}))
  assert runs.state(stopped) == runs.STOPPED
  done = tmp_path / "done"
  write_run(done, [0.5, 0.4])
  assert runs.state(done) == runs.FINISHED
  assert [r.val_loss for r in runs.read_finished(done).epochs] == [0.5, 0.4]
  (done / runs.RUN_INFO).write_text("{not json")  # being written: not finished, not an error
  assert runs.state(done) == runs.FAILED


def _imports(path: pathlib.Path) -> set[str]:
  """The benchmarks modules a file imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
      found.add(node.module.split(".")[1])
  return found


def test_benchmarks_has_no_import_circle_and_analysis_renders_nothing():
  graph = {p.stem: _imports(p) & {q.stem for q in BENCHMARKS.glob("*.py")}
           for p in BENCHMARKS.glob("*.py")}

  def reach(start):
    seen, todo = set(), [start]
    while todo:
      for nxt in graph.get(todo.pop(), ()):
        if nxt not in seen:
          seen.add(nxt)
          todo.append(nxt)
    return seen

  assert [m for m in graph if m in reach(m)] == []
  rendering = {"report", "tables", "sections", "cells", "plots", "bands"}
  for module in ("runs", "catalogue", "metrics", "analysis", "declared", "tuning", "suite",
                 "suite_schema"):
    assert not reach(module) & rendering, module


def test_no_benchmarks_source_file_over_400_lines():
  long = {p.name: n for p in BENCHMARKS.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > 400}
  assert long == {}

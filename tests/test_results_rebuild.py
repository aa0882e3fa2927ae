"""`benchmarks report` on a copy of each committed results folder rebuilds the committed files.

Nothing is trained: the report reads the committed run records (run.json, epochs.jsonl,
steps.jsonl, bench.json) and must give back the committed results.json and REPORT.md. A change
to how records are read, or to a figure's rule, shows up here as a diff.

Ignored, because they describe the machine and the moment of the rebuild, not the records:
- `meta.report_date` and REPORT.md's "Report written <date>": the time of this rebuild;
- `meta.report_commit`: the commit and dirtiness of this checkout;
- `meta.python`: the Python version running the report (the runs' own Python is in
  `meta.hardware`, which is compared).
Every other value, floats included, must be equal exactly. The plots are not drawn (their names
are still decided from the records); tests/test_bench_report.py checks that drawing them names
the same files.
"""

import json
import pathlib
import re
import shutil

import pytest

from benchmarks import report

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
FOLDERS = sorted(p.parent.name for p in RESULTS.glob("*/suite.toml"))
# Written by the report itself, or not read by it; the rest (records, suite, commands) is copied.
_NOT_INPUTS = ("plots", "results.json", "REPORT.md")
_MACHINE = ("report_date", "report_commit", "python")
_REPORT_DATE = re.compile(r"^- Report written \S+;", re.M)


def _strip(results: dict) -> dict:
  meta = results["meta"]
  assert all(k in meta for k in _MACHINE), "results.json's meta changed shape"
  return {**results, "meta": {k: v for k, v in meta.items() if k not in _MACHINE}}


def _differences(a, b, path="") -> list[str]:
  """The paths where two JSON values differ, so a failure names the figures that moved."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in
            (_differences(a.get(k), b.get(k), f"{path}.{k}") if k in a and k in b
             else [f"{path}.{k}: only in {'rebuilt' if k in a else 'committed'}"])]
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
  return [] if a == b and type(a) is type(b) else [f"{path}: rebuilt {a!r}, committed {b!r}"]


def _rebuild(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
  out = tmp_path / name
  shutil.copytree(RESULTS / name, out, ignore=shutil.ignore_patterns(*_NOT_INPUTS))
  report.write(out, render_plots=False)  # the plots' names only: drawing them takes seconds
  return out


def test_there_are_committed_results():
  assert {"cpu", "ablations"} <= set(FOLDERS)


@pytest.mark.parametrize("name", FOLDERS)
def test_report_rebuilds_committed_results(name, tmp_path):
  out = _rebuild(name, tmp_path)
  committed = json.loads((RESULTS / name / "results.json").read_text())
  rebuilt = json.loads((out / "results.json").read_text())
  assert _differences(_strip(rebuilt), _strip(committed)) == []

  committed_md = (RESULTS / name / "REPORT.md").read_text()
  rebuilt_md = (out / "REPORT.md").read_text()
  assert len(_REPORT_DATE.findall(committed_md)) == 1
  assert (_REPORT_DATE.sub("- Report written DATE;", rebuilt_md)
          == _REPORT_DATE.sub("- Report written DATE;", committed_md))

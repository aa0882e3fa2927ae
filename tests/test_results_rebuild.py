"""`benchmarks report` on a copy of each committed results folder rebuilds the committed files.

Nothing is trained: the report reads the committed run records (run.json, epochs.jsonl,
steps.jsonl, bench.json) and must give back the committed results.json and REPORT.md. A change
to how records are read, or to a figure's rule, shows up here as a diff.

Ignored, because they describe the machine and the moment of the rebuild, not the records:
- `meta.report_date` and REPORT.md's "Report written <date>": the time of this rebuild;
- `meta.report_commit`: the commit and dirtiness of this checkout;
- `meta.python`: the Python version running the report (the runs' own Python is in
  `meta.hardware`, which is compared).
Every other value must be equal; floats within a relative 1e-9 (`REL_TOL`), so that a SciPy
release that moves `t.ppf` or a bootstrap quantile by an ulp does not fail the rebuild while a
moved figure still does. REPORT.md's text must be equal outside its numbers, and each printed
decimal within `REL_TOL` or one unit of its last printed digit (a value on a rounding boundary
may print either way), each integer exactly. The plots are not drawn (their names are still
decided from the records); tests/test_bench_report.py checks that drawing them names the same
files.
"""

import json
import math
import pathlib
import re
import shutil

import pytest

from benchmarks import report

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
# The folders with a committed report; one whose runs are still being made (no results.json yet,
# as cpu-v3's while its lanes run) has nothing to rebuild.
FOLDERS = sorted(p.parent.name for p in RESULTS.glob("*/suite.toml")
                 if (p.parent / "results.json").exists())
# Written by the report itself, or not read by it; the rest (records, suite, commands) is copied.
_NOT_INPUTS = ("plots", "results.json", "REPORT.md")
_MACHINE = ("report_date", "report_commit", "python")
_REPORT_DATE = re.compile(r"^- Report written \S+;", re.M)
REL_TOL = 1e-9
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


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
  if isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=REL_TOL):
    return []
  return [] if a == b and type(a) is type(b) else [f"{path}: rebuilt {a!r}, committed {b!r}"]


def _text_differences(a: str, b: str) -> list[str]:
  """Where two reports differ: their text outside numbers exactly, each printed number within
  `REL_TOL` or one unit of its last printed digit."""
  out = []
  for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())):
    if _NUMBER.split(x) != _NUMBER.split(y) or len(_NUMBER.findall(x)) != len(
        _NUMBER.findall(y)):
      out.append(f"line {i + 1}: rebuilt {x!r}, committed {y!r}")
      continue
    for m, n in zip(_NUMBER.finditer(x), _NUMBER.finditer(y)):
      u, v = float(m.group(0)), float(n.group(0))
      # A decimal's last printed digit may flip on a rounding boundary; an integer is a count.
      token = m.group(0)
      unit = 10.0 ** -len(token.partition(".")[2]) if "." in token and "e" not in token else 0.0
      if not (math.isclose(u, v, rel_tol=REL_TOL) or abs(u - v) <= unit * (1 + 1e-9)):
        out.append(f"line {i + 1}: rebuilt {m.group(0)}, committed {n.group(0)}")
  if len(a.splitlines()) != len(b.splitlines()):
    out.append(f"rebuilt {len(a.splitlines())} lines, committed {len(b.splitlines())}")
  return out


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
  assert _text_differences(_REPORT_DATE.sub("- Report written DATE;", rebuilt_md),
                           _REPORT_DATE.sub("- Report written DATE;", committed_md)) == []


def test_the_tolerance_takes_an_ulp_and_catches_a_moved_figure():
  x = 0.0035321
  assert _differences({"p": math.nextafter(x, 1.0)}, {"p": x}) == []
  assert _differences({"p": x * (1 + 1e-6)}, {"p": x}) != []
  assert _differences({"n": 3}, {"n": 3.0}) != []  # a type change is still a change
  assert _text_differences("| a | 0.0625 | 12 |", "| a | 0.0624 | 12 |") == []  # last digit
  assert _text_differences("| a | 0.0625 | 12 |", "| a | 0.0612 | 12 |") != []
  assert _text_differences("| a | 0.0625 | 12 |", "| b | 0.0625 | 12 |") != []
  assert _text_differences("| 12 |", "| 13 |") != []  # counts are exact

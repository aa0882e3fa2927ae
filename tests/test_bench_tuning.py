"""Bracketed tuning, the controls' runs and the [analysis] declaration, on synthetic records.

Nothing here trains: the selection reads run folders written by the test, and the runner's
orchestration starts `tests/fake_train.py` (synthetic records, no JAX) in place of `python -m
train`. The expected values are computed by hand in the comments.
"""

import json
import math
import pathlib
import statistics
import sys

import pytest

from benchmarks import __main__ as benchmarks_main
from benchmarks import analysis
from benchmarks import compare
from benchmarks import report
from benchmarks import runner
from benchmarks import suite as suite_lib
from benchmarks import tuning
from train import config as config_lib
from train import control_kinds
from train import records
from train import strategies

FAKE_TRAIN = pathlib.Path(__file__).resolve().parent / "fake_train.py"
HAS_REPLAY = "replay_from" in config_lib.field_names()
BASE = """\
name = "t"
seeds = [0, 1]
strategies = ["fixed", "gradvar"]
epochs = 2
lr_grid = [1e-3, 1e-2]
tune_seeds = [1000, 1001]
max_extensions = 1
[defaults]
model_size = "tiny"
[tasks.rt_sentiment]
train_examples = 48
"""


# ---- the bracketing rule ---------------------------------------------------------------------

def _walk(table, grid=(3e-4, 1e-3, 3e-3), limit=2):
  return tuning.bracket(grid, table.get, limit)


def test_pick_inside_the_grid_adds_nothing():
  b = _walk({3e-4: 0.7, 1e-3: 0.5, 3e-3: 0.6})
  assert (b.pick, b.complete, b.extensions, b.on_edge) == (1e-3, True, 0, False)
  assert b.grid == (3e-4, 1e-3, 3e-3)


def test_pick_on_the_low_edge_extends_down_one_log_step_until_the_limit():
  # 3e-4 / (1e-3 / 3e-4) = 9e-5; 9e-5 / (3e-4 / 9e-5) = 2.7e-5; each one better: limit 2 hit.
  b = _walk({3e-4: 0.5, 1e-3: 0.6, 3e-3: 0.7, 9e-5: 0.4, 2.7e-5: 0.3})
  assert b.grid == (3e-4, 1e-3, 3e-3, 9e-5, 2.7e-5)
  assert (b.pick, b.complete, b.extensions, b.on_edge) == (2.7e-5, True, 2, True)


def test_pick_on_the_high_edge_extends_up_and_stops_once_bracketed():
  # 3e-3 * (3e-3 / 1e-3) = 9e-3, which is worse: the pick 3e-3 is now inside.
  b = _walk({3e-4: 0.7, 1e-3: 0.6, 3e-3: 0.5, 9e-3: 0.8})
  assert b.grid == (3e-4, 1e-3, 3e-3, 9e-3)
  assert (b.pick, b.complete, b.extensions, b.on_edge) == (3e-3, True, 1, False)


def test_the_walk_stops_at_a_missing_point_and_names_it():
  b = _walk({3e-4: 0.5, 1e-3: 0.6, 3e-3: 0.7})
  assert (b.complete, b.missing, b.extensions) == (False, (9e-5,), 1)
  b = _walk({3e-4: 0.5, 3e-3: 0.7})  # an initial point missing: nothing extended yet
  assert (b.complete, b.missing, b.extensions, b.grid) == (False, (1e-3,), 0, (3e-4, 1e-3, 3e-3))


def test_limit_zero_reports_an_edge_pick_without_extending():
  b = _walk({3e-4: 0.5, 1e-3: 0.6, 3e-3: 0.7}, limit=0)
  assert (b.pick, b.complete, b.extensions, b.on_edge) == (3e-4, True, 0, True)


def test_ties_go_to_the_smaller_lr_and_all_diverged_goes_lower():
  b = _walk({3e-4: 0.6, 1e-3: 0.5, 3e-3: 0.5})
  assert (b.pick, b.on_edge) == (1e-3, False)
  b = _walk({3e-4: math.inf, 1e-3: math.inf, 3e-3: math.inf, 9e-5: math.inf, 2.7e-5: math.inf})
  assert (b.pick, b.extensions, b.on_edge) == (2.7e-5, 2, True)


def test_point_score_and_beyond():
  assert tuning.point_score([0.5, 0.7], ["ok", "ok"]) == pytest.approx(0.6)
  assert tuning.point_score([0.5, None], ["ok", "diverged"]) == math.inf
  assert tuning.point_score([0.5, None], ["ok", "missing"]) is None
  assert tuning.beyond([1e-3, 1e-2, 1e-1], 1e-2) is None
  assert tuning.beyond([1e-2, 1e-3], 1e-2) == 0.1  # the order as written does not matter
  with pytest.raises(ValueError, match="at least 2 points"):
    tuning.beyond([1e-3], 1e-3)


# ---- the selection over run folders ----------------------------------------------------------

def _epoch(epoch, val_loss, eff_lr=1e-3, train_loss=0.7):
  return records.EpochRow.from_json({
      "cpu_time_s": 0.1, "device_memory_mb": None,
      "effective_lr": None if eff_lr is None else 2 * eff_lr,  # the last step's, not the mean
      "effective_lr_mean": eff_lr, "elapsed_s": float(epoch), "epoch": epoch,
      "examples_per_s": 10.0, "lr_scale": None, "lr_scale_mean": None, "peak_rss_mb": 1.0,
      "step": 3 * epoch, "train_accuracy": 0.5, "train_loss": train_loss,
      "train_time_s": 0.5, "train_time_total_s": 0.5 * epoch, "val_accuracy": 0.5,
      "val_loss": val_loss, "variability_mean": None})


def _write_run(workdir, val_losses, eff_lrs=None):
  workdir.mkdir(parents=True, exist_ok=True)
  eff_lrs = eff_lrs or [1e-3] * len(val_losses)
  rows = [_epoch(i + 1, v, e) for i, (v, e) in enumerate(zip(val_losses, eff_lrs))]
  (workdir / "epochs.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in rows))
  (workdir / "run.json").write_text(json.dumps({"start": "s", "end": "e"}))


def _tune(out, suite, strategy, lr, seed, val_losses):
  _write_run(out / suite.run("rt_sentiment", strategy, seed, lr=lr, kind="tune").relpath(),
             val_losses)


def test_selection_with_diverged_runs_and_an_extension(tmp_path):
  s = suite_lib.parse(BASE)
  # fixed: 1e-3 scores mean(0.5, 0.7) = 0.6 (the best epoch of each); 1e-2 has a diverged
  # seed (a null validation loss) so it scores +inf. The pick 1e-3 is on the low edge.
  _tune(tmp_path, s, "fixed", 1e-3, 1000, [0.6, 0.5])
  _tune(tmp_path, s, "fixed", 1e-3, 1001, [0.7, 0.8])
  _tune(tmp_path, s, "fixed", 1e-2, 1000, [0.4, 0.3])
  _tune(tmp_path, s, "fixed", 1e-2, 1001, [0.4, None])
  # gradvar: 1e-2 (0.4) beats 1e-3 (0.5), on the high edge; only seed 1000 of 1e-3 is done.
  _tune(tmp_path, s, "gradvar", 1e-3, 1000, [0.5, 0.5])
  _tune(tmp_path, s, "gradvar", 1e-2, 1000, [0.4, 0.4])
  _tune(tmp_path, s, "gradvar", 1e-2, 1001, [0.4, 0.4])
  picks = tuning.selection(s, tmp_path)["rt_sentiment"]
  f = picks["fixed"]
  assert f["scores"] == {"0.001": [0.5, 0.7], "0.01": [0.3, None], "0.0001": [None, None]}
  assert f["states"]["0.01"] == ["ok", "diverged"]
  assert f["score"]["0.001"] == pytest.approx(0.6) and f["score"]["0.01"] == math.inf
  assert (f["lr"], f["complete"], f["extensions"], f["grid"]) == (1e-3, False, 1,
                                                                  [1e-3, 1e-2, 1e-4])
  assert picks["gradvar"]["complete"] is False and picks["gradvar"]["extensions"] == 0
  needed = {(r.strategy, r.lr, r.seed) for r in tuning.needed_runs(s, tmp_path)}
  assert needed == {("fixed", 1e-4, 1000), ("fixed", 1e-4, 1001), ("gradvar", 1e-3, 1001)}

  # 1e-4 scores 0.65 > 0.6: fixed stays at 1e-3, now inside. gradvar: 1e-2 stays the best,
  # 1e-1 is added (limit 1), scores 0.35 and wins: the pick is on the edge after the limit.
  _tune(tmp_path, s, "fixed", 1e-4, 1000, [0.65, 0.7])
  _tune(tmp_path, s, "fixed", 1e-4, 1001, [0.65, 0.7])
  _tune(tmp_path, s, "gradvar", 1e-3, 1001, [0.5, 0.5])
  _tune(tmp_path, s, "gradvar", 1e-1, 1000, [0.35, 0.4])
  _tune(tmp_path, s, "gradvar", 1e-1, 1001, [0.35, 0.4])
  picks = tuning.selection(s, tmp_path)["rt_sentiment"]
  assert (picks["fixed"]["lr"], picks["fixed"]["complete"], picks["fixed"]["on_edge"]) == (
      1e-3, True, False)
  g = picks["gradvar"]
  assert (g["lr"], g["complete"], g["extensions"], g["on_edge"]) == (0.1, True, 1, True)
  assert tuning.needed_runs(s, tmp_path) == []
  # v1's view: the initial grid only, v1's keys; gradvar's pick there is 1e-2.
  v1 = tuning.v1_selection(s, tmp_path)["rt_sentiment"]
  assert set(v1["gradvar"]) == set(tuning.V1_KEYS) and v1["gradvar"]["lr"] == 1e-2
  assert v1["fixed"]["scores"] == {"0.001": [0.5, 0.7], "0.01": [0.3, None]}


def test_strategy_grids_and_grid_points():
  s = suite_lib.parse(BASE.replace("max_extensions = 1", "max_extensions = 1\n"
                                   "lr_grid = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]").replace(
                                       "lr_grid = [1e-3, 1e-2]\n", "")
                      + "[grids]\ngradvar = [1, 2, 4]\n[grid_points]\nrt_sentiment = 3\n")
  assert s.strategy_grid("rt_sentiment", "fixed") == (3e-4, 1e-3, 3e-3)  # the middle 3
  assert s.strategy_grid("rt_sentiment", "gradvar") == (1.0, 2.0, 4.0)
  assert [(r.strategy, r.lr) for r in s.tune_grid()][:3] == [
      ("fixed", 3e-4), ("fixed", 1e-3), ("fixed", 3e-3)]


# ---- the controls ----------------------------------------------------------------------------

@pytest.fixture
def with_controls(monkeypatch):
  """The control strategies, stood in by `fixed` where this checkout does not have them."""
  for name in ("gradvar-null", "matched-gradvar", "replay-gradvar"):
    if name not in strategies.names():
      monkeypatch.setitem(strategies._REGISTRY, name, strategies._REGISTRY["fixed"])


CONTROLS = BASE.replace('strategies = ["fixed", "gradvar"]',
                        'strategies = ["fixed", "gradvar", "gradvar-null", "matched-gradvar", '
                        '"replay-gradvar"]').replace("seeds = [0, 1]", "seeds = [0, 1, 2]")


def test_matched_lr_is_the_mean_effective_lr():
  rows = [_epoch(1, 0.5, 1e-3), _epoch(2, 0.5, 2e-3), _epoch(3, 0.5, 4.5e-3)]
  assert control_kinds.matched_lr(rows) == pytest.approx(2.5e-3, rel=1e-12)  # 7.5e-3 / 3
  with pytest.raises(ValueError, match="effective_lr_mean"):
    control_kinds.matched_lr([_epoch(1, 0.5, None)])


def test_replay_seed_is_the_next_evaluation_seed_cyclically():
  assert [control_kinds.replay_seed((0, 1, 2), s) for s in (0, 1, 2)] == [1, 2, 0]
  assert control_kinds.replay_seed((7, 3), 3) == 7
  with pytest.raises(ValueError, match="at least 2"):
    control_kinds.replay_seed((0,), 0)
  with pytest.raises(ValueError, match="not one of"):
    control_kinds.replay_seed((0, 1), 5)


def test_control_runs_come_from_the_adaptive_strategys_records(tmp_path, with_controls):
  s = suite_lib.parse(CONTROLS)
  assert s.tuned_strategies == ("fixed", "gradvar") and len(s.grid()) == 6  # no controls
  lrs = {"rt_sentiment": {name: 2e-3 for name in s.strategies}}
  for seed, effs in ((0, [1e-3, 3e-3]), (1, [2e-3, 2e-3])):  # seed 2 not yet run
    _write_run(tmp_path / s.run("rt_sentiment", "gradvar", seed, lr=2e-3).relpath(),
               [0.5, 0.5], effs)
  runs, waiting = compare.control_runs(s.narrow(seeds=2), tmp_path, lrs)
  by = {(r.strategy, r.seed): r for r in runs}
  # gradvar-null: gradvar's LR. matched: mean(1e-3, 3e-3) = 2e-3 on seed 0, 2e-3 on seed 1.
  assert by["gradvar-null", 0].lr == 2e-3 and by["gradvar-null", 0].options == ()
  m = dict(by["matched-gradvar", 0].control)
  assert m == {"control": "matched-gradvar", "of": "gradvar",
               "source": "runs/rt_sentiment/gradvar/lr0.002/seed0",
               "lr": by["matched-gradvar", 0].lr, "base_lr": 2e-3}
  assert m["lr"] == statistics.fmean([1e-3, 3e-3])
  # replay: seed 0 follows seed 1 (present); seed 1 follows seed 2, over the file's seeds
  # [0, 1, 2] although --seeds narrowed to 2: it waits for gradvar's seed-2 run.
  replay = by["replay-gradvar", 0]
  assert replay.lr == 2e-3
  path = dict(replay.options)["replay_from"]
  assert (compare.REPO_ROOT / path).resolve() == (
      tmp_path / "runs/rt_sentiment/gradvar/lr0.002/seed1").resolve()
  assert dict(replay.control)["source_seed"] == 1
  assert ("replay-gradvar", 1) not in by
  # The v1 report's view gives a control its adaptive strategy's entry.
  v1 = tuning.v1_selection(s, tmp_path)["rt_sentiment"]
  assert list(v1) == list(s.strategies) and v1["matched-gradvar"] == v1["gradvar"]
  assert waiting == ["rt_sentiment/replay-gradvar/seed1: "
                     "runs/rt_sentiment/gradvar/lr0.002/seed2 has not finished"]
  # The folder of a matched run is named by its own LR; the relpath rule is unchanged.
  assert by["matched-gradvar", 0].relpath() == pathlib.Path(
      "runs/rt_sentiment/matched-gradvar", suite_lib.lr_dirname(m["lr"]), "seed0")


# ---- the declaration -------------------------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ('metric = "epochs"', "analysis.metric: unknown metric 'epochs'"),
    ('primaries = ["rt_sentiment gradvar vs fixed"]', "analysis.primaries[0]: must read"),
    ('primaries = ["imdb: gradvar vs fixed"]', "analysis.primaries[0]: 'imdb' is not one of"),
    ('primaries = ["rt_sentiment: gns vs fixed"]', "analysis.primaries[0]: 'gns' is not one"),
    ('primaries = ["rt_sentiment: fixed vs fixed"]', "compares 'fixed' with itself"),
    ('primaries = ["rt_sentiment: gradvar vs fixed", "rt_sentiment: fixed vs gradvar"]',
     "analysis.primaries[1]: 'rt_sentiment: fixed vs gradvar' repeats"),
    ("primaries = 3", "analysis.primaries: must be a list"),
    ("alpha = 1.5", "analysis.alpha: must be a number in (0, 1)"),
    ("permutations = 0", "analysis.permutations: must be a positive int"),
    ("bootstrap = 2.5", "analysis.bootstrap: must be a positive int"),
    ("holm = true", "analysis.holm: unknown key"),
])
def test_analysis_errors_name_the_file_and_field(table, message):
  with pytest.raises(ValueError) as info:
    suite_lib.parse(BASE + "[analysis]\n" + table + "\n", pathlib.Path("x.toml"))
  assert "x.toml" in str(info.value) and message in str(info.value)


def test_analysis_is_parsed():
  s = suite_lib.parse(BASE + '[analysis]\nprimaries = [" rt_sentiment :gradvar  vs fixed"]\n'
                      "bootstrap = 500\n")
  assert s.analysis == suite_lib.Analysis(
      "steps_to_target", (suite_lib.Primary("rt_sentiment", "gradvar", "fixed"),), 0.05,
      10000, 500)
  assert str(s.analysis.primaries[0]) == "rt_sentiment: gradvar vs fixed"
  assert suite_lib.parse(BASE).analysis is None


@pytest.mark.parametrize("change, message", [
    ('strategies = ["fixed", "matched-gradvar"]',
     "strategies: 'matched-gradvar' is a control of 'gradvar', which must also be"),
    ("max_extensions = -1", "max_extensions: must be an int >= 0"),
    ("lr_grid = [1e-3]", "lr_grid: has a single point"),
    ("[grids]\ngradvar-null = [1e-3, 1e-2]", "grids.gradvar-null: is a control"),
    ("[grids]\nprodigy = [1.0, 2.0]", "grids.prodigy: is not one of the suite's strategies"),
    ("[grid_points]\nrt_sentiment = 1", "grid_points.rt_sentiment: must be an int >= 2"),
])
def test_tuning_keys_errors_name_the_field(change, message, with_controls):
  key = change.split(" ")[0]
  base = CONTROLS if "gradvar-null" in change else BASE
  if change.startswith("["):
    text = base + change + "\n"
  else:
    text = "\n".join(change if line.startswith(key + " ") else line
                     for line in base.splitlines()) + "\n"
  with pytest.raises(ValueError) as info:
    suite_lib.parse(text, pathlib.Path("x.toml"))
  assert "x.toml" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("table, message", [
    ("lr_grid = [1e-3]", "tasks.rt_sentiment.lr_grid: has a single point"),
    ("[tasks.rt_sentiment.grids]\ngradvar = [1e-3]",
     "tasks.rt_sentiment.grids.gradvar: has a single point"),
])
def test_a_task_grid_of_one_point_fails_at_load_time(table, message):
  # BASE ends inside [tasks.rt_sentiment]: a task's own grids resolve per arm.
  with pytest.raises(ValueError) as info:
    suite_lib.parse(BASE + table + "\n", pathlib.Path("x.toml"))
  assert "x.toml" in str(info.value) and message in str(info.value)
  # Without bracketing, one point is a plain fixed choice.
  suite_lib.parse(BASE.replace("max_extensions = 1", "max_extensions = 0") + table + "\n")


# ---- the order of work, with a stand-in for `python -m train` --------------------------------

PIPELINE = CONTROLS.replace("seeds = [0, 1, 2]", "seeds = [0, 1]").replace(
    "lr_grid = [1e-3, 1e-2]", "lr_grid = [3e-3, 1e-2]").replace(
    "tune_seeds = [1000, 1001]", "tune_seeds = [1000]\nuntuned_runs = false") + """\
[calibration]
reference_seeds = [100]
[analysis]
primaries = ["rt_sentiment: gradvar vs gradvar-null", "rt_sentiment: gradvar vs fixed"]
"""


def test_tune_calibrate_compare_in_order(tmp_path, monkeypatch, with_controls):
  text = PIPELINE if HAS_REPLAY else PIPELINE.replace(', "replay-gradvar"', "")
  path = tmp_path / "p.toml"
  path.write_text(text)
  out = tmp_path / "out"
  monkeypatch.setattr(runner, "command", lambda config_file, resume: [
      sys.executable, str(FAKE_TRAIN), "--config", str(config_file)])
  suite = suite_lib.load(str(path))
  # Evaluation before the targets is refused, with the commands to run first.
  with pytest.raises(ValueError) as info:
    compare.compare(suite, out, ["compare"], tune=True, progress=False, write_report=False)
  assert "benchmarks tune" in str(info.value) and "benchmarks calibrate" in str(info.value)
  assert not out.exists()
  assert benchmarks_main.main(["compare", "--suite", str(path), "--out", str(out), "--tune",
                               "--no-progress"]) == 2
  with pytest.raises(ValueError, match="tuning of fixed on rt_sentiment is not complete"):
    compare.calibrate(suite, out, ["calibrate"], progress=False)

  # tune: the grid [3e-3, 1e-2] picks 3e-3 (nearest 1e-3), the low edge: one extension at
  # 3e-3 / (1e-2 / 3e-3) = 9e-4, which wins and is on the edge after the limit of 1.
  assert benchmarks_main.main(["tune", "--suite", str(path), "--out", str(out),
                               "--no-progress"]) == 0
  picks = tuning.selection(suite, out)["rt_sentiment"]
  assert set(picks) == {"fixed", "gradvar"}  # controls are never tuned
  for p in picks.values():
    assert (p["lr"], p["extensions"], p["on_edge"], p["complete"]) == (9e-4, 1, True, True)
  calls = (out / "calls.log").read_text().split()
  assert len(calls) == 6 and all(c.startswith("tune/") for c in calls)
  # Again: nothing reruns.
  assert benchmarks_main.main(["tune", "--suite", str(path), "--out", str(out),
                               "--no-progress"]) == 0
  assert len((out / "calls.log").read_text().split()) == 6

  # calibrate: the reference runs are fixed at its tuned LR.
  assert benchmarks_main.main(["calibrate", "--suite", str(path), "--out", str(out),
                               "--no-progress"]) == 0
  suite = suite_lib.load(str(path))
  # fake_train: best val loss 0.5 + 0.01 (log10(9e-4) + 3)^2 at seed 100 (+ 0.01 x 100), x 1.05.
  best = 0.5 + 0.01 * (math.log10(9e-4) + 3) ** 2 + 1.0
  assert suite.calibration.thresholds["rt_sentiment"] == pytest.approx(round(best * 1.05, 6))
  assert suite.calibration.raw["lr"] == {"rt_sentiment": 9e-4}
  assert (out / "reference/rt_sentiment/fixed/lr0.0009/seed100/run.json").exists()

  # compare --tune: the adaptive and reference strategies first, then the controls.
  assert benchmarks_main.main(["compare", "--suite", str(path), "--out", str(out), "--tune",
                               "--no-progress", "--no-report"]) == 0
  calls = (out / "calls.log").read_text().split()[7:]
  kinds = [c.split("/")[2] for c in calls]
  adaptive = [k for k in kinds if k in ("fixed", "gradvar")]
  assert kinds[:len(adaptive)] == adaptive and len(adaptive) == 4  # no untuned runs
  assert all(c.split("/")[3] == "lr0.0009" for c in calls if c.split("/")[2] != "matched-gradvar")
  for seed in (0, 1):
    source = out / f"runs/rt_sentiment/gradvar/lr0.0009/seed{seed}"
    mean = statistics.fmean(r.effective_lr_mean for r in
                            records.read_epochs(source / "epochs.jsonl"))
    # fake_train: 9e-4 x mean(1 + seed / 10, 0.5 + seed / 10) = 9e-4 x (0.75 + seed / 10)
    assert mean == pytest.approx(9e-4 * (0.75 + seed / 10))
    folder = out / "runs/rt_sentiment/matched-gradvar" / suite_lib.lr_dirname(mean) / f"seed{seed}"
    control = json.loads((folder / "control.json").read_text())
    assert control == {"control": "matched-gradvar", "of": "gradvar", "lr": mean,
                       "base_lr": 9e-4, "source": f"runs/rt_sentiment/gradvar/lr0.0009/seed{seed}"}
    assert json.loads((folder / "config.json").read_text())["lr"] == mean
    null = out / f"runs/rt_sentiment/gradvar-null/lr0.0009/seed{seed}"
    assert json.loads((null / "config.json").read_text())["strategy"] == "gradvar-null"
    if HAS_REPLAY:
      replay = out / f"runs/rt_sentiment/replay-gradvar/lr0.0009/seed{seed}"
      expected = out / f"runs/rt_sentiment/gradvar/lr0.0009/seed{1 - seed}"
      given = json.loads((replay / "config.json").read_text())["replay_from"]
      assert (compare.REPO_ROOT / given).resolve() == expected.resolve()
  # Idempotent: a second compare trains nothing.
  before = (out / "calls.log").read_text()
  assert benchmarks_main.main(["compare", "--suite", str(path), "--out", str(out), "--tune",
                               "--no-progress", "--no-report"]) == 0
  assert (out / "calls.log").read_text() == before
  # The report: with untuned_runs = false only the tuned setting, and no run is missing.
  results, _ = analysis.collect(out)
  assert list(results["tasks"]["rt_sentiment"]["settings"]) == ["tuned"]
  text = report.write(out, render_plots=False)
  assert "(untuned;" not in text and "(tuned;" in text
  assert "## Missing runs" not in (out / "REPORT.md").read_text()


# ---- per-task arms: strategies and seed counts per task ---------------------------------------

ARMS = CONTROLS.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3]") + """\
[tasks.rt_sentiment.arms]
fixed = 4
gradvar = 3
gradvar-null = 3
replay-gradvar = 2
[tasks.fashion_mnist]
train_examples = 48
[tasks.fashion_mnist.arms]
fixed = 2
gradvar = 2
"""


def test_arms_give_each_task_its_strategies_and_seeds(with_controls):
  s = suite_lib.parse(ARMS)
  assert s.task_strategies("rt_sentiment") == ("fixed", "gradvar", "gradvar-null",
                                               "replay-gradvar")
  assert s.task_tuned_strategies("fashion_mnist") == ("fixed", "gradvar")
  assert s.task_controls("fashion_mnist") == ()
  assert s.seeds_of("rt_sentiment", "gradvar") == (0, 1, 2)
  assert s.seeds_of("rt_sentiment", "matched-gradvar") == ()  # not an arm of rt_sentiment
  # `arms` is the suite's key, not a config field.
  assert "arms" not in dict(s.run("rt_sentiment", "fixed", 0).settings)
  grid = {(r.task, r.strategy, r.seed) for r in s.grid()}
  assert grid == ({("rt_sentiment", "fixed", i) for i in range(4)}
                  | {("rt_sentiment", "gradvar", i) for i in range(3)}
                  | {("fashion_mnist", st, i) for st in ("fixed", "gradvar") for i in range(2)})
  assert {(r.task, r.strategy) for r in s.tune_grid()} == {
      (t, st) for t in ("rt_sentiment", "fashion_mnist") for st in ("fixed", "gradvar")}
  # --seeds 2 keeps each arm's first 2 of its own seeds.
  assert s.narrow(seeds=2).seeds_of("rt_sentiment", "gradvar") == (0, 1)
  # A task without arms runs every strategy on every seed.
  plain = suite_lib.parse(CONTROLS)
  assert plain.task_strategies("rt_sentiment") == plain.strategies
  assert plain.seeds_of("rt_sentiment", "replay-gradvar") == (0, 1, 2)


def test_replay_in_arms_cycles_over_its_sources_seeds(tmp_path, with_controls):
  s = suite_lib.parse(ARMS)
  lrs = {t: {name: 2e-3 for name in s.task_strategies(t)} for t in s.tasks}
  for seed in range(3):
    _write_run(tmp_path / s.run("rt_sentiment", "gradvar", seed, lr=2e-3).relpath(), [0.5, 0.5])
  runs, waiting = compare.control_runs(s, tmp_path, lrs)
  assert waiting == []
  by = {(r.strategy, r.seed): r for r in runs}
  assert set(by) == {("gradvar-null", 0), ("gradvar-null", 1), ("gradvar-null", 2),
                     ("replay-gradvar", 0), ("replay-gradvar", 1)}
  assert dict(by["replay-gradvar", 1].control)["source_seed"] == 2
  assert all(r.task == "rt_sentiment" for r in runs)


@pytest.mark.parametrize("change, message", [
    ("fixed = 4", "tasks.rt_sentiment.arms.fixed: must be a number of seeds from 1 to 4"),
    ("gradvar = 3", "tasks.rt_sentiment.arms.prodigy: is not one of the suite's strategies"),
    ("replay-gradvar = 2", "tasks.rt_sentiment.arms.replay-gradvar: has 2 seeds, more than"),
    ("gradvar-null = 3", "tasks.rt_sentiment.arms: has no 'fixed', the suite's baseline"),
])
def test_arms_errors_name_the_field(change, message, with_controls):
  bad = {"fixed = 4": "fixed = 5", "gradvar = 3": "gradvar = 3\nprodigy = 1",
         "replay-gradvar = 2": "replay-gradvar = 2\ngradvar = 1",
         "gradvar-null = 3": "gradvar-null = 3\nfixed = 1"}[change]
  text = ARMS.replace(change, bad, 1)
  if change == "replay-gradvar = 2":
    text = text.replace("gradvar = 3\n", "", 1)
  if change == "gradvar-null = 3":
    text = text.replace("[tasks.rt_sentiment.arms]\nfixed = 4\n", "[tasks.rt_sentiment.arms]\n")
    text = text.replace("gradvar-null = 3\nfixed = 1", "gradvar-null = 3")
  with pytest.raises(ValueError) as info:
    suite_lib.parse(text, pathlib.Path("x.toml"))
  assert "x.toml" in str(info.value) and message in str(info.value)


def test_a_primary_must_pair_arms_of_its_task(with_controls):
  text = ARMS + '[analysis]\nprimaries = ["fashion_mnist: gradvar vs gradvar-null"]\n'
  with pytest.raises(ValueError, match="'gradvar-null' is not an arm of fashion_mnist"):
    suite_lib.parse(text)


def test_compare_runs_exactly_the_arms(tmp_path, monkeypatch, with_controls):
  text = ARMS if HAS_REPLAY else ARMS.replace("replay-gradvar = 2\n", "").replace(
      ', "replay-gradvar"', "")
  path = tmp_path / "a.toml"
  path.write_text(text)
  out = tmp_path / "out"
  monkeypatch.setattr(runner, "command", lambda config_file, resume: [
      sys.executable, str(FAKE_TRAIN), "--config", str(config_file)])
  assert benchmarks_main.main(["compare", "--suite", str(path), "--out", str(out),
                               "--no-progress"]) == 0
  calls = sorted((out / "calls.log").read_text().split())
  ran = {tuple(c.split("/")[i] for i in (1, 2, 4)) for c in calls}
  expected = ({("rt_sentiment", "fixed", f"seed{i}") for i in range(4)}
              | {("rt_sentiment", st, f"seed{i}") for st in ("gradvar", "gradvar-null")
                 for i in range(3)}
              | {("fashion_mnist", st, f"seed{i}") for st in ("fixed", "gradvar")
                 for i in range(2)})
  if HAS_REPLAY:
    expected |= {("rt_sentiment", "replay-gradvar", f"seed{i}") for i in range(2)}
  assert ran == expected and len(calls) == len(expected)
  results = json.loads((out / "results.json").read_text())
  rt = results["tasks"]["rt_sentiment"]
  assert rt["arms"] == {"fixed": 4, "gradvar": 3, "gradvar-null": 3, "replay-gradvar": 2} \
      if HAS_REPLAY else True
  groups = results["tasks"]["fashion_mnist"]["settings"]["untuned"]["strategies"]
  assert set(groups) == {"fixed", "gradvar"} and groups["gradvar"]["seeds"] == [0, 1]
  assert (out / "REPORT.md").exists()


def test_task_grids_are_the_most_specific():
  text = BASE.replace("[tasks.rt_sentiment]\n", "[grids]\ngradvar = [2e-3, 4e-3]\n"
                      "[tasks.rt_sentiment]\nlr_grid = [1e-5, 3e-5]\n"
                      "grids = { fixed = [5e-5, 1e-4, 2e-4] }\n") + (
                      "[tasks.fashion_mnist]\ntrain_examples = 48\n")
  s = suite_lib.parse(text)
  assert s.strategy_grid("rt_sentiment", "fixed") == (5e-5, 1e-4, 2e-4)
  assert s.strategy_grid("rt_sentiment", "gradvar") == (1e-5, 3e-5)
  assert s.strategy_grid("fashion_mnist", "gradvar") == (2e-3, 4e-3)
  assert s.strategy_grid("fashion_mnist", "fixed") == (1e-3, 1e-2)
  assert "lr_grid" not in dict(s.run("rt_sentiment", "fixed", 0).settings)
  with pytest.raises(ValueError, match="tasks.rt_sentiment.grids.prodigy: is not one of"):
    suite_lib.parse(text.replace("fixed = [5e-5", "prodigy = [5e-5"))
  with pytest.raises(ValueError, match=r"tasks.rt_sentiment.lr_grid: has duplicates"):
    suite_lib.parse(text.replace("[1e-5, 3e-5]", "[1e-5, 1e-5]"))


def test_task_lrs_give_each_strategy_its_own_untuned_lr():
  text = BASE.replace("train_examples = 48\n", "train_examples = 48\nlr = 2e-3\n"
                      "lrs = { gradvar = 5e-3 }\n")
  s = suite_lib.parse(text)
  assert {(r.strategy, r.lr) for r in s.grid()} == {("fixed", 2e-3), ("gradvar", 5e-3)}
  assert s.strategy_lr("rt_sentiment", "fixed") == 2e-3
  assert "lrs" not in dict(s.run("rt_sentiment", "fixed", 0).settings)
  assert s.run("rt_sentiment", "gradvar", 0, lr=1e-4).lr == 1e-4  # an explicit LR wins
  with pytest.raises(ValueError, match="tasks.rt_sentiment.lrs.gns: is not one of"):
    suite_lib.parse(text.replace("gradvar = 5e-3", "gns = 5e-3"))
  with pytest.raises(ValueError, match="tasks.rt_sentiment.lrs.gradvar: must be a positive"):
    suite_lib.parse(text.replace("gradvar = 5e-3", "gradvar = -1"))

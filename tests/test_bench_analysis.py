"""The pre-registered analysis in the report, from synthetic records, against hand values.

The suite declares its analysis in an [analysis] table (`Suite.analysis`); the same suite
without it must give no analysis sections.
"""

import dataclasses
import json

import evals_rows
import matplotlib.pyplot as plt
import pytest
from test_bench_report import write_run

from benchmarks import analysis
from benchmarks import bands
from benchmarks import plots
from benchmarks import report
from benchmarks import suite as suite_lib

SUITE = """\
name = "analysed"
seeds = [0, 1, 2]
strategies = ["fixed", "gradvar", "cosine"]
baseline = "fixed"
epochs = 6
lr = 1e-3

[defaults]
model_size = "tiny"

[tasks.rt_sentiment]
train_examples = 48

[calibration.thresholds]
rt_sentiment = 0.7

[analysis]
metric = "steps_to_target"
primaries = ["rt_sentiment: gradvar vs fixed", "rt_sentiment: cosine vs fixed"]
alpha = 0.05
permutations = 10000
bootstrap = 2000
"""
# The same suite without a declared analysis.
SUITE_UNDECLARED = SUITE[:SUITE.index("[analysis]")]
STEPS_PER_EPOCH, EVERY = 4, 2  # 24 steps a run, an evaluation every 2: steps 2, 4, ..., 24
# The step of the first evaluation at or below 0.7 (None: never), per (strategy, seed).
REACH = {("fixed", 0): 10, ("fixed", 1): 14, ("fixed", 2): None,
         ("gradvar", 0): 4, ("gradvar", 1): 6, ("gradvar", 2): 8,
         ("cosine", 0): 12, ("cosine", 1): 12, ("cosine", 2): 20}
ACC = {("fixed", 0): 0.80, ("fixed", 1): 0.82, ("fixed", 2): 0.84,
       ("gradvar", 0): 0.85, ("gradvar", 1): 0.86, ("gradvar", 2): 0.90,
       ("cosine", 0): 0.80, ("cosine", 1): 0.82, ("cosine", 2): 0.84}
CURVE = [1.0, 0.9, 0.8, 0.7, 0.66, 0.65]
CURVE_HIGH = [1.0, 0.9, 0.8, 0.78, 0.76, 0.75]  # fixed seed 2: ends above the prior's 0.72


def _losses(reach):
  return [0.65 if reach is not None and step >= reach else 0.9
          for step in range(EVERY, EVERY * 12 + 1, EVERY)]


def make_out(tmp_path, declared=True, step_cost=None, regime=None):
  text = SUITE if declared else SUITE_UNDECLARED
  out = tmp_path / "out"
  out.mkdir()
  (out / "suite.toml").write_text(text)
  suite = suite_lib.parse(text)
  for (strategy, seed), reach in REACH.items():
    folder = out / suite.run("rt_sentiment", strategy, seed).relpath()
    curve = CURVE_HIGH if (strategy, seed) == ("fixed", 2) else CURVE
    write_run(folder, curve, ACC[(strategy, seed)], strategy, steps_per_epoch=STEPS_PER_EPOCH)
    evals_rows.write(folder, _losses(reach), every=EVERY, steps_per_epoch=STEPS_PER_EPOCH)
  if step_cost is not None:
    (out / "step_cost.json").write_text(json.dumps(step_cost))
  if regime is not None:
    (out / "regime.json").write_text(json.dumps(regime))
  return out


STEP_COST = {"command": "python -m benchmarks.perf.step_cost --suite analysed",
             "hardware": {"device_kind": "cpu"},
             "tasks": {"rt_sentiment": {"ratios": {"fixed": 1.0, "gradvar": 1.5,
                                                   "cosine": 1.0}}}}
REGIME = {"sklearn": "1.9.1", "command": "python -m benchmarks regime --suite analysed",
          "tasks": {"rt_sentiment": {"accuracy": 0.95, "validation_examples": 100,
                                     "train_examples": 48, "class_prior_loss": 0.72,
                                     "method": "tfidf-1-2gram-logreg"}}}


def test_primaries_with_censored_runs_and_holm(tmp_path):
  out = make_out(tmp_path, step_cost=STEP_COST)
  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  fixed = results["tasks"]["rt_sentiment"]["settings"]["untuned"]["strategies"]["fixed"]
  assert fixed["reach"]["steps_to_target"]["values"] == {"0": 10, "1": 14, "2": None}
  assert fixed["per_seed"]["2"]["horizon_steps"] == 24
  assert fixed["reach"]["examples_to_target"]["values"] == {"0": 160, "1": 224, "2": None}

  g, c = results["primaries"]
  # gradvar - fixed, fixed's seed 2 censored at 24: -6, -8, -16. Only the two assignments with
  # every sign alike reach |sum| 30: p = 2/8.
  assert (g["a"], g["b"], g["n"]) == ("gradvar", "fixed", 3)
  assert g["differences"] == {"0": -6.0, "1": -8.0, "2": -16.0}
  assert g["median_difference"] == -8.0 and g["p_value"] == 0.25 and g["exact"]
  assert (g["reached_a"], g["reached_b"]) == (3, 2)
  # cosine - fixed: 2, -2, -4; |signed sums| 4, 4, 0, 8, 8, 0, 4, 4 -> 6/8 >= 4.
  assert c["differences"] == {"0": 2.0, "1": -2.0, "2": -4.0} and c["p_value"] == 0.75
  # Holm over 2: 0.25 x 2 = 0.5, then max(0.5, 0.75 x 1).
  assert (g["p_holm"], c["p_holm"]) == (0.5, 0.75)
  assert not g["significant"] and not c["significant"]
  # Time to target: the median steps (gradvar 4, 6, 8 -> 6; fixed 10, 14, n.r. -> 14) x the
  # per-step cost ratio to fixed.
  assert g["time_to_target"] == {"a": 9.0, "b": 14.0}

  # Secondary: per non-baseline strategy, 7 paired metrics and the censored steps to target,
  # all with 3 pairs. Only gradvar's three accuracy differences (0.05, 0.04, 0.06 for the
  # final, best and test accuracy) exclude 0.
  assert results["secondary"] == {"intervals": 16, "exclude_zero": 3,
                                   "expected_by_chance": pytest.approx(0.8)}

  md = (out / "REPORT.md").read_text()
  assert "## Primaries (pre-registered)" in md and "## Secondary" in md
  assert ("| rt_sentiment | gradvar − fixed | untuned | 3 | 3/3 | 2/3 | -8 | [-16, -6] |"
          in md)
  assert "| 0.25 (exact) | 0.5 | 9 / 14 |" in md
  assert "**3** exclude 0; about 0.8 would by chance alone (0.05 × 16)" in md
  assert "### Untuned (the suite's LR for every strategy) — secondary" in md
  assert "steps to target (reached/n; median [per seed]) | 2/3; median 14 [10, 14, n.r.]" in md
  assert "Measured by `python -m benchmarks.perf.step_cost --suite analysed` on cpu." in md
  assert "## Regime check" not in md  # no regime.json
  # The seed's stability on the evaluation grid: fixed seed 2 never leaves 0.9, so 0 there.
  assert fixed["per_seed"]["2"]["stability_evals"] == 0.0
  assert "| stability (std val loss, last 5 evaluations) |" in md


def test_time_to_target_not_measured_without_step_cost(tmp_path):
  out = make_out(tmp_path)
  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  assert results["primaries"][0]["time_to_target"] == {"a": None, "b": None}
  md = (out / "REPORT.md").read_text()
  assert "| not measured / not measured |" in md
  assert "Not measured: this folder has no step_cost.json." in md


def test_a_missing_primary_keeps_the_correction_for_all_declared(tmp_path):
  # A third primary whose runs lack evals counts as p = 1 in Holm: m stays 3.
  out = make_out(tmp_path)
  suite = suite_lib.parse(SUITE)
  for seed in (0, 1, 2):
    (out / suite.run("rt_sentiment", "cosine", seed).relpath() / "evals.jsonl").unlink()
  report.write(out, render_plots=False)
  g, c = json.loads((out / "results.json").read_text())["primaries"]
  assert c["n"] == 0 and c["p_value"] is None
  assert g["p_holm"] == 0.5 and c["p_holm"] == 1.0


def test_regime_check_flags_a_short_task_and_memorisation(tmp_path):
  out = make_out(tmp_path, regime=REGIME)
  report.write(out, render_plots=False)
  r = json.loads((out / "results.json").read_text())["regime"]["tasks"]["rt_sentiment"]
  # fixed's best val accuracies 0.80, 0.82, 0.84: mean 0.82 of n = 100; Wilson's 95% interval
  # (z = 1.96): centre (0.82 + z^2/200) / (1 + z^2/100) = 0.8082, half-width 0.0748.
  assert r["baseline_best_val_accuracy"] == pytest.approx(0.82)
  assert r["interval"] == [pytest.approx(0.7333, abs=1e-4), pytest.approx(0.8830, abs=1e-4)]
  assert r["falls_short"] is True  # the reference's 0.95 is above 0.883
  # fixed seed 2 ends at 0.75 > 0.72; every other run ends at 0.65.
  assert r["memorised"] == [{"setting": "untuned", "strategy": "fixed", "seed": 2,
                             "final_val_loss": 0.75}]
  md = (out / "REPORT.md").read_text()
  assert "## Regime check" in md and "Wilson" in md and "scikit-learn 1.9.1" in md
  assert ("| rt_sentiment | fixed (untuned) | 0.8200 | [0.7333, 0.8830] | 0.9500 | 100 | **yes** |"
          in md)
  assert "rt_sentiment / untuned / fixed / seed 2: final validation loss 0.7500 > 0.7200" in md


def test_regime_check_passes_a_task_within_the_interval(tmp_path):
  regime = json.loads(json.dumps(REGIME))
  regime["tasks"]["rt_sentiment"].update(accuracy=0.85, class_prior_loss=0.8)
  out = make_out(tmp_path, regime=regime)
  report.write(out, render_plots=False)
  r = json.loads((out / "results.json").read_text())["regime"]["tasks"]["rt_sentiment"]
  assert r["falls_short"] is False and r["memorised"] == []


def test_no_analysis_sections_without_a_declaration(tmp_path):
  out = make_out(tmp_path, declared=False)
  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  assert "primaries" not in results and "secondary" not in results
  md = (out / "REPORT.md").read_text()
  assert "Primaries" not in md and "## Secondary" not in md and "— secondary" not in md
  assert results["plots"]["rt_sentiment"][0] == "val_loss_rt_sentiment.png"


def test_main_panel_and_grid_are_written(tmp_path):
  out = make_out(tmp_path)
  report.write(out)
  results = json.loads((out / "results.json").read_text())
  names = results["plots"]["rt_sentiment"]
  # fixed, gradvar (adaptive) and cosine (reference arm) are all in the main panel: no grid.
  assert names[0] == "val_loss_steps_rt_sentiment.png"
  assert "val_loss_grid_rt_sentiment.png" not in names
  data = (out / "plots" / names[0]).read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def _lines(fig):
  return {l.get_label().split(" ")[0]: l for ax in fig.axes for l in ax.get_lines()
          if not l.get_label().startswith(("_", "target"))}


def test_identical_curves_both_stay_visible(tmp_path):
  """fixed and cosine have the same validation losses on seeds 0 and 1: both lines are drawn,
  in different styles, with the one drawn later thinner."""
  out = make_out(tmp_path)
  suite = suite_lib.parse(SUITE)
  for seed in (0, 1, 2):  # cosine's evaluations become fixed's
    evals_rows.write(out / suite.run("rt_sentiment", "cosine", seed).relpath(),
                     _losses(REACH[("fixed", seed)]), every=EVERY,
                     steps_per_epoch=STEPS_PER_EPOCH)
  results, runs = analysis.collect(out)
  fig = plots.main_figure(results, runs, "rt_sentiment", "untuned")
  lines = _lines(fig)
  assert set(lines) == {"fixed", "gradvar", "cosine"}
  fixed, cosine = lines["fixed"], lines["cosine"]
  assert list(fixed.get_ydata()) == list(cosine.get_ydata())  # the same curve
  assert cosine.get_linestyle() != fixed.get_linestyle()
  assert cosine.get_marker() != fixed.get_marker()
  assert cosine.get_zorder() > fixed.get_zorder()
  assert cosine.get_linewidth() < fixed.get_linewidth()  # the lower one shows on both sides
  plt.close(fig)


def test_epoch_plot_styles_identical_strategies_apart():
  styles = bands.styles(["fixed", "plateau"])
  assert styles["fixed"]["ls"] != styles["plateau"]["ls"]
  assert styles["fixed"]["marker"] != styles["plateau"]["marker"]
  assert styles["plateau"]["zorder"] > styles["fixed"]["zorder"]
  assert styles["plateau"]["lw"] < styles["fixed"]["lw"]


def test_grid_holds_the_strategies_outside_the_main_panel(tmp_path, monkeypatch):
  out = make_out(tmp_path)
  results, runs = analysis.collect(out)
  # Without cosine among the reference arms the main panel is fixed and gradvar; cosine goes to
  # the grid.
  monkeypatch.setattr(plots, "REFERENCE_ROLES", ())
  assert [s for _, s in plots.main_strategies(results, "rt_sentiment", "untuned",
                                              {"fixed", "gradvar", "cosine"})] == [
      "fixed", "gradvar"]
  fig = plots.grid_figure(results, runs, "rt_sentiment", "untuned")
  assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["cosine"]
  assert set(_lines(fig)) == {"fixed", "cosine"}  # the baseline in grey behind it
  plt.close(fig)
  assert "val_loss_grid_rt_sentiment.png" in plots.write_all(results, runs, tmp_path / "p",
                                                             render=False)["rt_sentiment"]


def test_controls_follow_their_adaptive_strategy(tmp_path):
  assert [analysis.control_of(s) for s in ("gradvar-null", "matched-gns", "replay-gradvar",
                                         "gradvar", "cosine")] == [
      "gradvar", "gns", "gradvar", None, None]
  # matched-X's folder is named by the LR it realised; control.json says whose run it matches.
  out = tmp_path / "out"
  base = out / "runs" / "rt_sentiment" / "matched-gradvar"
  for lr, source_lr in (("lr0.00123", "lr0.001"), ("lr0.0005", "lr0.003")):
    folder = base / lr / "seed0"
    write_run(folder, CURVE)
    (folder / "control.json").write_text(json.dumps(
        {"control": "matched-gradvar", "of": "gradvar", "lr": float(lr[2:]),
         "source": f"runs/rt_sentiment/gradvar/{source_lr}/seed0"}))
  run = suite_lib.Run("rt_sentiment", "matched-gradvar", 1e-3, 0, 6, ())
  rec = analysis._finished(out, run)
  assert rec.path == base / "lr0.00123" / "seed0" and rec.info["control"]["lr"] == 0.00123
  assert analysis._finished(out, dataclasses.replace(run, lr=3e-3)).path.parent.name == "lr0.0005"
  assert analysis._finished(out, dataclasses.replace(run, seed=1)) is None


def test_each_adaptive_strategy_is_compared_with_its_null_control(tmp_path):
  # gradvar-null added to the suite, reaching at 8, 6, 16: gradvar - null = -4, 0, -8.
  text = SUITE.replace('strategies = ["fixed", "gradvar", "cosine"]',
                       'strategies = ["fixed", "gradvar", "cosine", "gradvar-null"]').replace(
      '"rt_sentiment: cosine vs fixed"]', '"rt_sentiment: cosine vs fixed", '
      '"rt_sentiment: gradvar vs gradvar-null"]')
  out = make_out(tmp_path)
  (out / "suite.toml").write_text(text)
  suite = suite_lib.parse(text)
  for seed, reach in enumerate((8, 6, 16)):
    folder = out / suite.run("rt_sentiment", "gradvar-null", seed).relpath()
    write_run(folder, CURVE, 0.8, "gradvar-null", steps_per_epoch=STEPS_PER_EPOCH)
    evals_rows.write(folder, _losses(reach), every=EVERY, steps_per_epoch=STEPS_PER_EPOCH)
  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  (c,) = results["controls"]
  assert (c["a"], c["b"], c["primary"]) == ("gradvar", "gradvar-null", True)
  assert c["differences"] == {"0": -4.0, "1": 0.0, "2": -8.0}
  # The same numbers as the primary on the same pair (which Holm then corrects).
  (p,) = [p for p in results["primaries"] if p["b"] == "gradvar-null"]
  assert (p["differences"], p["p_value"]) == (c["differences"], c["p_value"])
  md = (out / "REPORT.md").read_text()
  assert "## Adaptive strategies against their controls" in md
  assert "| rt_sentiment | gradvar − gradvar-null | untuned | 3 | 3/3 | 3/3 | -4 |" in md


def test_no_controls_section_without_controls(tmp_path):
  out = make_out(tmp_path)
  report.write(out, render_plots=False)
  assert json.loads((out / "results.json").read_text())["controls"] == []
  assert "against their controls" not in (out / "REPORT.md").read_text()

"""Budgets: the metrics read at a budget, the suite's `[tasks.T] budgets` and its budget arms,
and a tiny budgeted suite through tune and compare (tests/fake_budget_train.py, no JAX)."""

import json
import pathlib
import sys
import types

import pytest

from benchmarks import __main__ as benchmarks_main
from benchmarks import analysis
from benchmarks import anytime
from benchmarks import budgets
from benchmarks import catalogue
from benchmarks import report
from benchmarks import runner
from benchmarks import suite as suite_lib
from tests import evals_rows
from tests import fake_budget_train

FAKE = pathlib.Path(__file__).resolve().parent / "fake_budget_train.py"


def rows(losses, every=10):
  return [evals_rows.row(step=(i + 1) * every, epoch=1, examples=0, val_loss=v)
          for i, v in enumerate(losses)]


def test_best_val_loss_within_reads_only_the_evaluations_up_to_the_budget():
  evals = rows([0.9, 0.7, float("nan"), 0.8, 0.5])  # steps 10 .. 50
  assert budgets.best_val_loss_within(evals, 10) == 0.9
  assert budgets.best_val_loss_within(evals, 39) == 0.7  # the NaN at 30 is skipped
  assert budgets.best_val_loss_within(evals, 50) == 0.5
  assert budgets.best_val_loss_within(evals) == 0.5
  assert budgets.best_val_loss_within(evals, 5) is None
  with pytest.raises(ValueError, match="budget"):
    budgets.best_val_loss_within(evals, -1)


def test_steps_to_target_is_interpolated_between_evaluations():
  evals = rows([1.0, 0.8, 0.4, 0.3])  # steps 10 .. 40
  # 0.6 is crossed half-way from step 20 (0.8) to step 30 (0.4).
  assert budgets.steps_to_target_interp(evals, 0.6) == pytest.approx(25.0)
  assert budgets.steps_to_target_interp(evals, 0.7) == pytest.approx(22.5)
  assert budgets.steps_to_target_interp(evals, 0.4) == 30.0  # reached exactly at an evaluation
  assert budgets.steps_to_target_interp(evals, 1.5) == 10.0  # the first evaluation reaches it
  assert budgets.steps_to_target_interp(evals, 0.6, budget=29) is None  # not within the budget
  assert budgets.steps_to_target_interp(evals, 0.1) is None
  assert budgets.steps_to_target_interp(evals, None) is None
  after_nan = rows([float("nan"), 0.5])
  assert budgets.steps_to_target_interp(after_nan, 0.6) == 20.0


def test_budgeted_metrics_are_catalogue_entries_outside_the_older_suites_figures():
  assert {m.name for m in catalogue.budgeted()} >= {"best_val_loss_within",
                                                    "steps_to_target_interp"}
  with pytest.raises(ValueError, match="budgeted"):
    catalogue.Metric("x", "x", budgeted=True)
  at = budgets.at_budget(catalogue.get("steps_to_target_interp"), 2)
  assert (at.name, at.horizon) == ("steps_to_target_interp@2ep", "budget_steps@2ep")


SUITE = """\
name = "b"
seeds = [0, 1, 2]
strategies = ["fixed", "cosine"]
epochs = 4
lr_grid = [1e-3, 3e-3]
[defaults]
model_size = "tiny"
[tasks.rt_sentiment]
train_examples = 48
budgets = [2, 4]
[analysis]
metric = "best_val_loss_within"
primaries = ["rt_sentiment: fixed vs cosine-e2", "rt_sentiment: fixed vs cosine"]
[calibration.thresholds]
rt_sentiment = 0.9
"""


def test_budget_arms_of_the_horizon_knowing_strategies():
  suite = suite_lib.parse(SUITE)
  assert suite.strategies == ("fixed", "cosine", "cosine-e2")  # fixed needs no horizon
  assert suite.budgets == {"rt_sentiment": (2, 4)}
  run = suite.run("rt_sentiment", "cosine-e2", 0, lr=3e-3)
  assert str(run.relpath()) == "runs/rt_sentiment/cosine-e2/lr0.003/seed0"
  assert (run.config().strategy, run.config().epochs) == ("cosine", 2)
  assert suite.arm_epochs("rt_sentiment", "cosine-e2") == 2
  assert suite.arm_epochs("rt_sentiment", "fixed") == 4
  assert suite.strategy_grid("rt_sentiment", "cosine-e2") == (1e-3, 3e-3)


@pytest.mark.parametrize("budgets_line, message", [
    ("budgets = [2, 3]", "must end at the task's epochs (4)"),
    ("budgets = [4, 2]", "ascending"),
    ("budgets = [0, 4]", "whole epochs >= 1"),
    ("budgets = 4", "non-empty list"),
])
def test_bad_budgets_name_the_field(budgets_line, message):
  with pytest.raises(ValueError) as info:
    suite_lib.parse(SUITE.replace("budgets = [2, 4]", budgets_line), pathlib.Path("x.toml"))
  assert "tasks.rt_sentiment.budgets" in str(info.value) and message in str(info.value)


def test_a_budgeted_suite_through_tune_and_compare(tmp_path, monkeypatch):
  path, out = tmp_path / "b.toml", tmp_path / "out"
  path.write_text(SUITE)
  monkeypatch.setattr(runner, "command", lambda config_file, resume: [
      sys.executable, str(FAKE), "--config", str(config_file)])
  assert benchmarks_main.main(["compare", "--suite", str(path), "--out", str(out), "--tune",
                               "--no-progress", "--no-report"]) == 0
  calls = (out / "calls.log").read_text().split()
  # Tuned for its own budget: cosine-e2's tuning runs train 2 epochs, cosine's 4.
  assert sorted(c.split("/")[2] for c in calls if c.startswith("tune/")) == sorted(
      ["fixed", "cosine", "cosine-e2"] * 2)
  for arm, epochs in (("cosine-e2", 2), ("cosine", 4), ("fixed", 4)):
    config = json.loads((out / f"tune/rt_sentiment/{arm}/lr0.001/seed1000/config.json")
                        .read_text())
    assert (config["strategy"], config["epochs"]) == (arm.split("-e")[0], epochs)
  assert not any("fixed-e" in c for c in calls)  # horizon-free: run once, to H
  results, _ = analysis.collect(out)
  first, second = results["primaries"]
  assert first["budget_epochs"] == 2 and "budget_epochs" not in second
  # fixed at its pick, read at the budget (8 steps) from its own evals.jsonl: its loss at step 8.
  lr = results["tuned_lrs"]["rt_sentiment"]["fixed"]["lr"]
  groups = results["tasks"]["rt_sentiment"]["settings"]["tuned"]["strategies"]
  for seed in (0, 1, 2):
    folder = out / f"runs/rt_sentiment/fixed/{suite_lib.lr_dirname(lr)}/seed{seed}"
    evals = [evals_rows.row(**json.loads(line))
             for line in (folder / "evals.jsonl").read_text().splitlines()]
    per_seed = groups["fixed"]["per_seed"][seed]
    assert per_seed["best_val_loss_within@2ep"] == budgets.best_val_loss_within(evals, 8)
    assert per_seed["best_val_loss_within"] == budgets.best_val_loss_within(evals, 16)
    assert per_seed["best_val_loss_within@2ep"] > per_seed["best_val_loss_within"]
  # Every seed: cosine-e2 ends 0.05 lower than fixed at the same budget (fake_budget_train).
  assert first["seeds"] == [0, 1, 2]
  assert list(first["differences"].values()) == pytest.approx([0.05] * 3)
  assert results["tasks"]["rt_sentiment"]["budgets"] == {
      "epochs": [2, 4], "steps": [8, 16], "arms": {"cosine-e2": ["cosine", 2]},
      "horizon_knowing": ["cosine"]}
  text = report.write(out)
  assert "cosine-e2" in text
  # A loss has no time to target: the primaries' last column is the budget each pair is read at.
  md = (out / "REPORT.md").read_text()
  assert "| p (sign-flip) | p (Holm) | read at |" in md and "time to target A / B" not in md
  assert md.count("| 2 epochs (8 steps) |") == 1 and md.count("| 4 epochs (16 steps) |") == 1
  assert (out / "plots/anytime_rt_sentiment_tuned.png").stat().st_size > 0


def run_of(evals, epoch_ends=()):
  """A run's records as the budget metrics read them: evals.jsonl's rows, and epochs.jsonl's
  (step, val_loss) at each epoch's end."""
  epochs = [types.SimpleNamespace(step=s, val_loss=v) for s, v in epoch_ends]
  return types.SimpleNamespace(evals=evals, epochs=epochs)


def test_the_evaluations_are_evals_jsonl_and_each_epochs_end_once_per_step():
  # Evaluations every 10 steps; epochs of 15 steps: the first ends off the grid (15), the second
  # on it (30), where train.epoch writes one evaluation to both files.
  run = run_of(rows([0.9, 0.8, 0.7]), [(15, 0.85), (30, 0.7)])
  assert [(e.step, e.val_loss) for e in budgets.evaluations(run)] == [
      (10, 0.9), (15, 0.85), (20, 0.8), (30, 0.7)]
  assert budgets.evaluations(run_of(None, [(15, 0.85)])) == [budgets.Evaluation(15, 0.85)]


def test_a_budget_that_ends_an_epoch_off_the_grid_reads_that_epochs_evaluation():
  # A cosine run to 642 steps (2 epochs of 321) with evaluations every 50: its lowest loss is at
  # its end, step 642, which only epochs.jsonl holds.
  evals = rows([0.7, 0.6, 0.55, 0.5, 0.48, 0.47, 0.46, 0.46, 0.45, 0.45, 0.44, 0.44], every=50)
  run = run_of(evals, [(321, 0.455), (642, 0.41)])
  assert budgets.best_val_loss_within(budgets.evaluations(run), 642) == 0.41
  assert budgets.best_val_loss_within(budgets.evaluations(run), 641) == 0.44
  metric = catalogue.get("best_val_loss_within")
  assert metric.compute(run, None, 642) == 0.41 and metric.compute(run, None, 600) == 0.44
  # Interpolated between the evaluations at 600 (0.44) and 642 (0.41).
  assert budgets.steps_to_target_interp(budgets.evaluations(run), 0.425) == pytest.approx(621.0)
  assert anytime.running_best(run)[642] == 0.41


def test_the_anytime_plot_reads_the_running_best_and_splits_the_arms():
  run = run_of(rows([0.9, float("nan"), 0.95, 0.6]))
  assert anytime.running_best(run) == {10: 0.9, 20: 0.9, 30: 0.9, 40: 0.6}
  assert anytime.running_best(run_of(rows([float("nan"), 0.5]))) == {20: 0.5}
  assert anytime.running_best(run_of(rows([0.9]), [(15, 0.7)])) == {10: 0.9, 15: 0.7}
  entry = {"budgets": {"arms": {"cosine-e2": ["cosine", 2], "step-e2": ["step", 2]},
                       "horizon_knowing": ["step", "cosine"]}}
  free, knowing = anytime.arms(entry, ["fixed", "step", "step-e2", "cosine", "cosine-e2", "gns"])
  assert free == ["fixed", "gns"]
  assert knowing == {"step": ["step", "step-e2"], "cosine": ["cosine", "cosine-e2"]}


def test_interpolated_steps_to_target_censored_at_the_budget(tmp_path, monkeypatch):
  text = SUITE.replace('metric = "best_val_loss_within"', 'metric = "steps_to_target_interp"')
  path, out = tmp_path / "b.toml", tmp_path / "out"
  path.write_text(text.replace("rt_sentiment = 0.9", "rt_sentiment = 0.6"))
  monkeypatch.setattr(runner, "command", lambda config_file, resume: [
      sys.executable, str(FAKE), "--config", str(config_file)])
  assert benchmarks_main.main(["compare", "--suite", str(path), "--out", str(out), "--tune",
                               "--no-progress", "--no-report"]) == 0
  results, _ = analysis.collect(out)
  first = results["primaries"][0]  # fixed vs cosine-e2, at 2 epochs (8 steps)
  assert first["budget_epochs"] == 2
  for seed, diff in first["differences"].items():
    # fixed (0.5 + 0.01 seed + 1 / (1 + s)) is above 0.6 up to step 8: censored at the budget.
    # cosine-e2 crosses 0.6 between its evaluations at steps 6 and 8.
    loss = {s: fake_budget_train.val_loss("cosine", 1e-3, seed, 2, s) for s in (6, 8)}
    crossing = 6 + 2 * (loss[6] - 0.6) / (loss[6] - loss[8])
    assert 6 < crossing < 8
    assert diff == pytest.approx(8 - crossing)


def test_a_budget_arm_that_never_reaches_takes_the_longer_horizon_against_fixed():
  # step-e2 stops at 624 steps without reaching the target; fixed reaches it at 900 of 1560.
  # Censored at its own 624 it would read 276 steps *fewer* than fixed while counted as worse.
  def group(values, horizon):
    return {"per_seed": {s: {"steps_to_target": v, "horizon_steps": horizon}
                         for s, v in values.items()},
            "reach": {"steps_to_target": {"values": values}}}
  budget_arm = group({0: None, 1: None, 2: 500}, 624)
  fixed = group({0: 900, 1: None, 2: 600}, 1560)
  paired = analysis._paired(budget_arm, fixed)
  assert paired["steps_to_target"] == {"better": 1, "tie": 1, "worse": 1}
  interval = paired["steps_to_target_censored"]
  # Seed 0: 1560 - 900; seed 1: both n.r., 1560 - 1560; seed 2: 500 - 600.
  assert interval["n"] == 3 and interval["mean"] == pytest.approx((660 + 0 - 100) / 3)

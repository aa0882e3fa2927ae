"""The seed's metrics and the statistics over seeds, against values computed by hand."""

import dataclasses
import math

import pytest

from benchmarks import metrics
from train import records

# t(0.975) quantiles from tables: 2 and 4 degrees of freedom.
T2, T4 = 4.302653, 2.776445


def epoch_row(**fields) -> records.EpochRow:
  """An epoch row with the given fields; every other required one None (not recorded)."""
  blank = {f.name: None for f in dataclasses.fields(records.EpochRow)
           if f.default_factory is dataclasses.MISSING}
  return records.EpochRow(**{**blank, "step": 0, **fields})


def step_row(**fields) -> records.StepRow:
  blank = {f.name: None for f in dataclasses.fields(records.StepRow)
           if f.default_factory is dataclasses.MISSING}
  return records.StepRow(**{**blank, "step": 1, "epoch": 1, **fields})


def rows(val_losses, seconds_per_epoch=10.0):
  return [epoch_row(epoch=i + 1, val_loss=v, train_time_total_s=seconds_per_epoch * (i + 1))
          for i, v in enumerate(val_losses)]


def test_threshold_is_reached_at_the_first_epoch_at_or_below_it():
  r = rows([1.0, 0.8, 0.6, 0.5, 0.7])
  assert metrics.epochs_to_threshold(r, 0.6) == 3  # equal counts as reached
  assert metrics.seconds_to_threshold(r, 0.6) == 30.0
  assert metrics.epochs_to_threshold(r, 0.55) == 4
  assert metrics.epochs_to_threshold(r, 1.5) == 1


def test_threshold_not_reached_is_none_and_skips_non_finite():
  assert metrics.epochs_to_threshold(rows([1.0, 0.9, 0.8]), 0.5) is None
  assert metrics.seconds_to_threshold(rows([1.0, 0.9, 0.8]), 0.5) is None
  assert metrics.epochs_to_threshold(rows([None, float("nan"), 0.4]), 0.5) == 3
  assert metrics.epochs_to_threshold(rows([0.1]), None) is None  # no threshold calibrated


def test_stability_is_population_std_of_the_last_five():
  # last five: 1, 2, 3, 4, 5 -> mean 3, squared deviations sum 10, / 5 = 2
  assert metrics.stability([100.0, 1, 2, 3, 4, 5]) == pytest.approx(math.sqrt(2))
  assert metrics.stability([2.0, 2.0]) == 0.0  # fewer epochs: all of them
  assert metrics.stability([1.0, 2, 3, 4, None]) is None
  assert metrics.stability([]) is None


def test_divergence_non_finite_or_exploding():
  assert not metrics.diverged([1.0, 0.8, 0.5], [0.9, 0.8, 0.7], [1.0, 0.9])
  assert metrics.diverged([1.0, 0.8, None], [0.9, 0.8, 0.7])
  assert metrics.diverged([1.0, 0.8, 0.7], [0.9, float("inf"), 0.7])
  assert metrics.diverged([1.0, 0.8, 0.7], [0.9, 0.8, 0.7], [1.0, float("nan")])
  assert metrics.diverged([1.0, 0.5, 2.1], [0.9, 0.8, 0.7], explode_factor=2.0)
  assert not metrics.diverged([1.0, 0.5, 1.9], [0.9, 0.8, 0.7], explode_factor=2.0)


def test_t_interval_by_hand():
  iv = metrics.t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1
  assert (iv.n, iv.mean, iv.sd) == (3, 2.0, 1.0)
  assert iv.half_width == pytest.approx(T2 / math.sqrt(3), rel=1e-6)
  assert iv.half_width == pytest.approx(2.484, abs=1e-3)  # the "about 2.5 sd" of the report
  assert iv.low == pytest.approx(2 - 2.48414, abs=1e-5)
  assert iv.includes_zero() is True  # low is -0.48

  iv = metrics.t_interval([2.0, 4.0, 6.0, 8.0, 10.0])  # mean 6, sd sqrt(10)
  assert iv.half_width == pytest.approx(T4 * math.sqrt(10) / math.sqrt(5), rel=1e-6)
  assert iv.includes_zero() is False


def test_t_interval_small_and_non_finite_samples():
  one = metrics.t_interval([0.7])
  assert one.n == 1 and one.mean == 0.7 and one.half_width is None
  assert one.includes_zero() is None  # no interval, not "yes"
  assert metrics.t_interval([]).mean is None
  assert metrics.t_interval([1.0, None, float("nan"), 3.0]).n == 2
  assert metrics.t_interval([1.0, None, float("nan"), 3.0]).mean == 2.0


def test_paired_differences_by_hand():
  strategy = {0: 1.0, 1: 2.0, 2: 4.0, 3: 9.0}
  baseline = {0: 0.5, 1: 1.0, 2: 2.0}  # seed 3 has no baseline: no pair
  assert metrics.paired_differences(strategy, baseline) == {0: 0.5, 1: 1.0, 2: 2.0}
  iv = metrics.paired_interval(strategy, baseline)
  # diffs 0.5, 1, 2: mean 7/6; squared deviations 4/9 + 1/36 + 25/36 = 7/6, / 2 = 7/12
  assert iv.n == 3 and iv.mean == pytest.approx(7 / 6)
  assert iv.sd == pytest.approx(math.sqrt(7 / 12))
  assert iv.half_width == pytest.approx(T2 * math.sqrt(7 / 12) / math.sqrt(3), rel=1e-6)
  assert iv.includes_zero() is True  # low = 7/6 - 1.897 < 0

  iv = metrics.paired_interval({0: 2.0, 1: 2.1, 2: 1.9}, {0: 1.0, 1: 1.0, 2: 1.0})
  assert iv.mean == pytest.approx(1.0) and iv.includes_zero() is False


def test_not_reached_is_counted_and_ordered_never_averaged():
  assert metrics.reached_count([3, None, 5]) == 2
  assert metrics.median_reached([3, None, 5]) == 5
  assert metrics.median_reached([3, None, None]) is None  # the median is "not reached"
  assert metrics.median_reached([4, 2]) == 3
  wins = metrics.paired_wins({0: 2, 1: None, 2: 5, 3: None}, {0: 3, 1: 4, 2: 5, 3: None})
  assert wins == {"better": 1, "tie": 2, "worse": 1}


def test_calibration_rule_and_lr_selection():
  assert metrics.threshold_from_reference([0.5, 0.4, 0.6], 1.05) == pytest.approx(0.525)
  with pytest.raises(ValueError, match="finite"):
    metrics.threshold_from_reference([0.5, None, 0.6], 1.05)
  assert metrics.select_lr({1e-3: [0.5, 0.7], 3e-3: [0.55, 0.6], 3e-4: [0.4, None]}) == 3e-3
  assert metrics.select_lr({3e-3: [0.5], 1e-3: [0.5]}) == 1e-3  # ties go to the smaller LR


def test_run_metrics_from_records():
  epochs = [epoch_row(epoch=e, val_loss=v, train_loss=t, val_accuracy=a,
                      train_time_total_s=5.0 * e, elapsed_s=7.0 * e, cpu_time_s=4.0,
                      peak_rss_mb=100.0 + e, device_memory_mb=None)
            for e, v, t, a in [(1, 0.9, 1.0, 0.6), (2, 0.6, 0.8, 0.8), (3, 0.7, 0.6, 0.75)]]
  bench = {"attempts": [{"cpu_s": 30.0}, {"cpu_s": 12.0}, {"rc": -15}]}
  m = metrics.run_metrics(epochs, [step_row(loss=0.9)],
                          {"test_loss": 0.65, "test_accuracy": 0.7}, threshold=0.65, bench=bench)
  assert m["epochs_to_threshold"] == 2 and m["seconds_to_threshold"] == 10.0
  assert (m["final_val_loss"], m["best_val_loss"], m["best_epoch"]) == (0.7, 0.6, 2)
  assert (m["final_val_accuracy"], m["best_val_accuracy"]) == (0.75, 0.8)
  assert m["test_accuracy"] == 0.7 and not m["diverged"]
  assert (m["train_time_s"], m["train_cpu_s"], m["process_cpu_s"]) == (15.0, 12.0, 42.0)
  assert m["peak_rss_mb"] == 103.0 and m["device_memory_mb"] is None
  assert m["stability"] == pytest.approx(math.sqrt(((0.9 - 0.7333333) ** 2 + (0.6 - 0.7333333) ** 2
                                                    + (0.7 - 0.7333333) ** 2) / 3), rel=1e-5)
  # One recorded step with a non-finite loss is a divergence, whatever the epochs say.
  assert metrics.run_metrics(epochs, [step_row(loss=0.9), step_row(loss=None)], None,
                             threshold=0.65)["diverged"]


def test_run_metrics_of_a_run_without_rows():
  m = metrics.run_metrics([], [], None, threshold=0.65)
  assert m["epochs_run"] == 0 and not m["diverged"]
  assert all(m[k] is None for k in ("final_val_loss", "best_val_loss", "best_epoch",
                                    "final_val_accuracy", "train_time_s", "elapsed_s",
                                    "epochs_to_threshold", "test_accuracy"))


def _evals(val_losses, every=10, batch=32):
  import evals_rows
  return [evals_rows.row(step=every * (i + 1), epoch=1, examples=every * (i + 1) * batch,
                         train_time_s=0.25 * every * (i + 1), val_loss=v, val_accuracy=0.5)
          for i, v in enumerate(val_losses)]


def test_steps_and_examples_to_target_from_evals():
  evals = _evals([1.0, 0.8, None, 0.6, 0.5])  # evaluations at steps 10, 20, ..., 50
  assert metrics.steps_to_target(evals, 0.6) == 40  # equal counts; the non-finite is skipped
  assert metrics.examples_to_target(evals, 0.6) == 40 * 32
  assert metrics.steps_to_target(evals, 0.9) == 20
  assert metrics.steps_to_target(evals, 0.4) is None  # censored
  assert metrics.examples_to_target(evals, 0.4) is None
  assert metrics.steps_to_target(evals, None) is None  # no target calibrated
  m = metrics.eval_metrics(evals, [epoch_row(epoch=1, step=64)], 0.6)
  assert m == {"steps_to_target": 40, "examples_to_target": 1280,
               "train_seconds_to_target": 10.0, "horizon_steps": 64, "evaluations": 5,
               "stability_evals": None}  # a non-finite loss among the last 5
  # The seed's stability over the last 5 evaluations: pstdev(0.8, 0.7, 0.6, 0.5, 0.4) =
  # sqrt(0.02).
  tail = metrics.eval_metrics(_evals([9.0, 0.8, 0.7, 0.6, 0.5, 0.4]), [], None)
  assert tail["stability_evals"] == pytest.approx(math.sqrt(0.02))
  # Without epoch rows, the horizon is the last evaluation's step.
  assert metrics.horizon_steps([], evals) == 50 and metrics.horizon_steps([], []) is None


def test_run_metrics_adds_the_eval_figures_only_with_evals():
  epochs = [epoch_row(epoch=1, step=50, val_loss=0.5, train_loss=1.0, val_accuracy=0.6,
                      train_time_total_s=12.0)]
  without = metrics.run_metrics(epochs, [], None, threshold=0.6)
  assert "steps_to_target" not in without and "horizon_steps" not in without
  with_ = metrics.run_metrics(epochs, [], None, threshold=0.6, evals=_evals([0.9, 0.55]))
  assert with_["steps_to_target"] == 20 and with_["horizon_steps"] == 50
  assert {k: with_[k] for k in without} == without  # the seed's per-epoch metrics stay

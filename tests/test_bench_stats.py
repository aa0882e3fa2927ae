"""The pre-registered analysis' statistics against values computed by hand."""

import math

import pytest

from benchmarks import stats

T2 = 4.302653  # t(0.975, 2 degrees of freedom), from tables


def test_holm_by_hand():
  # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06
  # (step-down: never below an earlier adjusted value).
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 x 2 is capped at 1, 0.6 follows it
  assert stats.holm([0.02]) == [0.02]  # one primary: no correction
  assert stats.holm([]) == []


def test_holm_counts_a_missing_primary_as_one():
  # m stays 3: 0.01 x 3, then max(0.03, 0.02 x 2), then 1.
  assert stats.holm([0.01, None, 0.02]) == pytest.approx([0.03, 1.0, 0.04])
  with pytest.raises(ValueError, match="p-values"):
    stats.holm([1.5])


def test_sign_flip_exact_enumeration_by_hand():
  # (1, 2, 3): the 8 signed sums are +-6, +-4, +-2, 0, 0; |sum| >= 6 twice -> 2/8.
  assert stats.sign_flip_test([1.0, 2.0, 3.0], permutations=8) == 0.25
  # (3, 1, 1): |signed sums| 5, 3, 3, 1, 1, 3, 3, 5 -> 2/8.
  assert stats.sign_flip_test([3.0, 1.0, 1.0]) == 0.25
  # (1, 2, -4): observed |sum| 1 is the smallest of all 8 -> p = 1.
  assert stats.sign_flip_test([1.0, 2.0, -4.0]) == 1.0
  assert stats.sign_flip_test([0.0, 0.0]) == 1.0
  assert stats.sign_flip_test([5.0]) == 1.0  # one seed: +-5 both tie
  assert stats.sign_flip_test([]) is None
  with pytest.raises(ValueError, match="finite"):
    stats.sign_flip_test([1.0, math.nan])


def test_sign_flip_monte_carlo_when_enumeration_is_too_large():
  diffs = [1.0] * 12  # exact p = 2 / 4096
  assert stats.sign_flip_test(diffs, permutations=4096) == pytest.approx(2 / 4096)
  p = stats.sign_flip_test(diffs, permutations=1000, seed=3)
  assert p == stats.sign_flip_test(diffs, permutations=1000, seed=3)  # fixed seed
  assert p >= 1 / 1001  # the observed assignment is counted: never 0
  assert p < 0.01
  mixed = [3.0, -1.0, 2.0, 0.5, -2.5, 1.0, 4.0, -0.5, 1.5, 2.0, -1.0, 0.5]
  exact = stats.sign_flip_test(mixed, permutations=4096)
  assert stats.sign_flip_test(mixed, permutations=4000, seed=0) == pytest.approx(exact, abs=0.03)


def test_censored_runs_take_the_horizon():
  assert stats.censor(None, 200) == 200.0
  assert stats.censor(120, 200) == 120.0
  assert stats.censor(None, None) is None


def test_paired_comparison_with_censored_runs_by_hand():
  horizon = {0: 200, 1: 200, 2: 200}
  a = {0: 100, 1: None, 2: 80}
  b = {0: 150, 1: 180, 2: None}
  c = stats.paired_comparison(a, b, horizon, horizon, permutations=1000, bootstrap=2000)
  # A - B with the horizon for n.r.: 100-150 = -50, 200-180 = 20, 80-200 = -120.
  assert c["differences"] == {0: -50.0, 1: 20.0, 2: -120.0}
  assert c["n"] == 3 and c["median_difference"] == -50.0
  assert (c["reached_a"], c["reached_b"]) == (2, 2)
  # |signed sums| of (-50, 20, -120): 150, 70, 190, 30, 30, 190, 70, 150 -> 4 of 8 >= 150.
  assert c["p_value"] == 0.5 and c["exact"]
  # Mean -50, sd sqrt((0 + 70^2 + 70^2) / 2) = 70.
  assert c["t_interval"]["mean"] == pytest.approx(-50.0)
  assert c["t_interval"]["half_width"] == pytest.approx(T2 * 70 / math.sqrt(3), rel=1e-6)
  # Resampled medians take only the values -120, -50, 20: the 2.5% and 97.5% points.
  assert c["bootstrap_interval"] == [-120.0, 20.0]


def test_paired_comparison_needs_both_runs_of_a_seed():
  c = stats.paired_comparison({0: 10, 1: 20}, {0: 30}, {0: 50, 1: 50}, {0: 50})
  assert c["seeds"] == [0] and c["differences"] == {0: -20.0}
  assert c["bootstrap_interval"] == [None, None]  # one pair: no interval
  empty = stats.paired_comparison({}, {}, {}, {})
  assert empty["n"] == 0 and empty["p_value"] is None and empty["median_difference"] is None


def test_bootstrap_median_interval_by_hand():
  # (0, 10): resampled medians 0, 5, 10 with probabilities 1/4, 1/2, 1/4.
  assert stats.bootstrap_median_interval([0.0, 10.0], 4000, seed=1) == (0.0, 10.0)
  # (1, 2, 3): P(median = 1) = P(median = 3) = 7/27 > 2.5%, so the ends are 1 and 3.
  assert stats.bootstrap_median_interval([1.0, 2.0, 3.0], 4000) == (1.0, 3.0)
  assert stats.bootstrap_median_interval([4.0, 4.0]) == (4.0, 4.0)
  assert stats.bootstrap_median_interval([4.0]) == (None, None)
  # A fixed seed: the same interval each time, and a 50% one is inside the 95% one.
  wide = stats.bootstrap_median_interval(list(range(9)), 2000, seed=5)
  assert wide == stats.bootstrap_median_interval(list(range(9)), 2000, seed=5)
  narrow = stats.bootstrap_median_interval(list(range(9)), 2000, seed=5, confidence=0.5)
  assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]


def test_wilson_interval_against_the_textbook_values():
  low, high = stats.wilson_interval(8, 10)  # 8/10: [0.4902, 0.9433]
  assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
  low, high = stats.wilson_interval(0, 10)  # 0/10: [0, 0.2775]
  assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
  assert stats.wilson_interval(1, 0) == (None, None)


def test_class_prior_loss_by_hand():
  # Training frequencies 3/4 and 1/4; validation labels 0, 1: -(ln 0.75 + ln 0.25) / 2.
  assert stats.class_prior_loss([0, 0, 0, 1], [0, 1]) == pytest.approx(
      -(math.log(0.75) + math.log(0.25)) / 2)
  assert stats.class_prior_loss([0, 1], [0, 0, 1, 1]) == pytest.approx(math.log(2))
  assert stats.class_prior_loss([0, 0], [0, 1]) == math.inf  # class 1 never seen in training
  with pytest.raises(ValueError, match="labels"):
    stats.class_prior_loss([], [0])

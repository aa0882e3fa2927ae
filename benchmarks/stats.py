"""The pre-registered analysis' statistics: pure functions of per-seed values.

- `holm`: Holm's step-down adjustment of the declared primaries' p-values.
- `sign_flip_test`: the paired sign-flip permutation test over seeds, two-sided.
- `censor`: steps to target, with a run that never reached the target given its horizon.
- `bootstrap_median_interval`: a percentile interval of the median paired difference.
- `paired_comparison`: all of these for one declared primary (task, A, B).
- `wilson_interval`, `class_prior_loss`: the regime check's interval and memorisation bound.

Every random draw comes from a generator seeded by the caller (default 0), so a report rebuilt
from the same records gives the same figures.
"""

from collections.abc import Mapping, Sequence
import itertools
import math
import statistics
from typing import Any, Optional

import numpy as np
from scipy import stats as scipy_stats

from benchmarks import metrics

DEFAULT_PERMUTATIONS = 10_000
DEFAULT_BOOTSTRAP = 10_000
# Two statistics closer than this (relative) count as equal, so float rounding in the sum of a
# flipped assignment that equals the observed one does not drop it from the tail.
_TIES = 1e-9


def holm(pvalues: Sequence[Optional[float]]) -> list[float]:
  """Holm's step-down adjusted p-values, in the order given.

  With the p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
  max over j <= i of min(1, (m - j + 1) p_(j)): monotone in the ordering and capped at 1. A
  missing p-value (None: the comparison has no data yet) counts as 1, so the number of declared
  primaries m, and with it the correction, does not shrink when runs are missing.
  """
  ps = [1.0 if p is None else float(p) for p in pvalues]
  for p in ps:
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"holm: p-values must lie in [0, 1], got {p!r}")
  m = len(ps)
  order = sorted(range(m), key=lambda i: ps[i])
  adjusted = [0.0] * m
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * ps[i]))
    adjusted[i] = running
  return adjusted


def sign_flip_test(differences: Sequence[float], permutations: int = DEFAULT_PERMUTATIONS,
                   seed: int = 0) -> Optional[float]:
  """Two-sided p-value of the paired sign-flip permutation test of mean difference 0.

  Under the null each seed's difference is as likely to have either sign. The statistic is
  |sum of the differences|; the p-value is the fraction of sign assignments whose statistic is
  at least the observed one. With 2^n <= `permutations` every assignment is enumerated (the
  exact test: with n seeds the smallest possible p is 2 / 2^n, since the assignment with all
  signs flipped ties the observed one). Otherwise `permutations` assignments are drawn with a
  generator seeded by `seed`, and p = (1 + count) / (1 + permutations), which counts the
  observed assignment once so p is never 0. None without differences.
  """
  d = np.asarray([float(x) for x in differences], dtype=np.float64)
  n = d.size
  if n == 0:
    return None
  if not np.all(np.isfinite(d)):
    raise ValueError(f"sign_flip_test: differences must be finite, got {list(differences)}")
  if permutations < 1:
    raise ValueError(f"sign_flip_test: permutations must be >= 1, got {permutations}")
  observed = abs(d.sum())
  tol = _TIES * max(1.0, float(np.abs(d).sum()))
  if 2 ** n <= permutations:
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    stats = np.abs(signs @ d)
    return float(np.mean(stats >= observed - tol))
  rng = np.random.default_rng(seed)
  signs = rng.choice(np.array([1.0, -1.0]), size=(permutations, n))
  count = int(np.sum(np.abs(signs @ d) >= observed - tol))
  return (1 + count) / (1 + permutations)


def censor(value: Optional[float], horizon: Optional[float]) -> Optional[float]:
  """Steps to target with a censored run (None: never reached) at its horizon."""
  if value is not None:
    return float(value)
  return None if horizon is None else float(horizon)


def bootstrap_median_interval(differences: Sequence[float], resamples: int = DEFAULT_BOOTSTRAP,
                              seed: int = 0, confidence: float = 0.95
                              ) -> tuple[Optional[float], Optional[float]]:
  """Percentile bootstrap interval of the median of the differences (seeds resampled with
  replacement, `resamples` times, from a generator seeded by `seed`); (None, None) below 2."""
  d = np.asarray([float(x) for x in differences], dtype=np.float64)
  if d.size < 2:
    return None, None
  rng = np.random.default_rng(seed)
  draws = np.median(d[rng.integers(0, d.size, size=(resamples, d.size))], axis=1)
  tail = (1.0 - confidence) / 2
  low, high = np.quantile(draws, [tail, 1.0 - tail])
  return float(low), float(high)


def paired_comparison(a: Mapping[Any, Optional[float]], b: Mapping[Any, Optional[float]],
                      horizon_a: Mapping[Any, Optional[float]],
                      horizon_b: Mapping[Any, Optional[float]],
                      permutations: int = DEFAULT_PERMUTATIONS,
                      bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                      confidence: float = 0.95) -> dict:
  """One primary comparison on the declared metric, A - B per seed (for steps to target, the
  default: negative means A is faster).

  `a` and `b` map seed -> the metric (None: not reached); `horizon_a`/`horizon_b` map seed ->
  the value a censored run takes (the run's total steps; None drops the seed). The seeds
  compared are those present in both with a value (reached or censored) for each.
  """
  diffs = {}
  for s in sorted(set(a) & set(b)):
    x, y = censor(a[s], horizon_a.get(s)), censor(b[s], horizon_b.get(s))
    if x is not None and y is not None:
      diffs[s] = x - y
  values = list(diffs.values())
  low, high = bootstrap_median_interval(values, bootstrap, seed, confidence)
  t = metrics.t_interval(values, confidence).to_json()
  return {
      "n": len(values),
      "seeds": list(diffs),
      "differences": diffs,
      "median_difference": statistics.median(values) if values else None,
      "bootstrap_interval": [low, high],
      "t_interval": t,
      "p_value": sign_flip_test(values, permutations, seed),
      "exact": bool(values) and 2 ** len(values) <= permutations,
      "reached_a": sum(a[s] is not None for s in diffs),
      "reached_b": sum(b[s] is not None for s in diffs),
      "confidence": confidence,
  }


def wilson_interval(successes: float, n: int, confidence: float = 0.95
                    ) -> tuple[Optional[float], Optional[float]]:
  """Wilson's score interval of a binomial proportion (`successes` of `n`); None for n = 0.

  `successes` may be a proportion times n that is not an integer (a mean over seeds)."""
  if n <= 0:
    return None, None
  z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def class_prior_loss(train_labels: Sequence[int], val_labels: Sequence[int]) -> float:
  """Cross-entropy on the validation labels of predicting the training labels' frequencies.

  A model whose validation loss is above it does worse than knowing nothing but the class
  frequencies: it has memorised the training set. A validation class never seen in training
  gives +inf (the prior assigns it probability 0).
  """
  if not len(train_labels) or not len(val_labels):
    raise ValueError("class_prior_loss: needs training and validation labels")
  counts: dict[int, int] = {}
  for y in train_labels:
    counts[int(y)] = counts.get(int(y), 0) + 1
  total = len(train_labels)
  loss = 0.0
  for y in val_labels:
    c = counts.get(int(y), 0)
    if c == 0:
      return math.inf
    loss -= math.log(c / total)
  return loss / len(val_labels)

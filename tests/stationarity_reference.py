"""A plain NumPy statement of reduce_on_stationarity's rule (SASA+), written apart from the library.

It keeps the leaky bucket as a growing list of the samples since the last drop and reads the
newest min(ceil(keep_fraction * t), capacity) of them, works in float64 and takes the t quantile
from scipy. The tests replay streams through it and through the library step by step.
"""

import math

import numpy as np
from scipy import stats


def delta(params_leaves, update_leaves) -> float:
  """-(<x, u> + |u|^2 / 2) in float64, from the params before the step and the applied update."""
  total = 0.0
  with np.errstate(invalid="ignore"):  # inf - inf in a poisoned step: a NaN sample, skipped
    for x, u in zip(params_leaves, update_leaves):
      x, u = np.asarray(x, np.float64), np.asarray(u, np.float64)
      total += float(np.sum(x * u) + np.sum(u * u) / 2)
  return -total


def batch_means_test(kept, significance, composite):
  """(stationary, mean, lower, upper) of the SASA+ test on the kept samples, oldest first."""
  kept = np.asarray(kept, np.float64)
  n = len(kept)
  mean = kept.mean()
  b = math.isqrt(n)
  batches = n // b
  batch_means = kept[:batches * b].reshape(batches, b).mean(axis=1)
  var = b * np.sum((batch_means - mean) ** 2) / (batches - 1)
  half_width = stats.t.ppf(1 - significance / 2, batches - 1) * math.sqrt(var / n)
  mean1, mean2 = kept[:n // 2].mean(), kept[n // 2:].mean()
  same_sign = mean1 * mean2 > 0
  # How near the verdict came to flipping, each comparison against the size of what it sums:
  # float32 may break a closer call differently.
  peak = max(np.max(np.abs(kept)), 1e-300)
  halves = [max(np.max(np.abs(h)), 1e-300) for h in (kept[:n // 2], kept[n // 2:])]
  batch_means_test.margin = min(
      abs(mean - half_width) / peak, abs(mean + half_width) / peak,
      abs(abs(mean1) - half_width) / peak, abs(abs(mean2) - half_width) / peak,
      abs(mean1) / halves[0], abs(mean2) / halves[1])
  if composite:
    stationary = abs(mean1) < half_width and abs(mean2) < half_width and same_sign
  else:
    stationary = mean - half_width < 0 < mean + half_width and same_sign
  return stationary, mean, mean - half_width, mean + half_width


class Reference:
  """Step-by-step model of one StationarityState."""

  def __init__(self, factor=0.1, test_every=100, min_samples=100, keep_fraction=1 / 8,
               significance=0.05, warmup_steps=0, min_scale=0.0, capacity=4096):
    self.factor, self.test_every, self.min_samples = factor, test_every, min_samples
    self.keep_fraction, self.significance = keep_fraction, significance
    self.warmup_steps, self.min_scale, self.capacity = warmup_steps, min_scale, capacity
    self.bucket = []  # every sample since the last drop
    self.steps = 0
    self.skipped = 0
    self.drops = 0
    self.test = (0, 0.0, 0.0, 0.0)  # step, mean, lower, upper
    self.scale = np.float32(1.0)
    self.capped = False  # whether a test has read a bucket the capacity cut short
    self.margin = np.inf  # the smallest margin of any test so far (see batch_means_test)

  def kept(self):
    # ceil(keep_fraction * t) in float32, as the library computes it.
    want = int(np.ceil(np.float32(len(self.bucket)) * np.float32(self.keep_fraction)))
    self.capped |= want > self.capacity
    n = min(want, self.capacity, len(self.bucket))
    return self.bucket[len(self.bucket) - n:]

  def step(self, sample) -> np.float32:
    """Takes one step's sample; returns the scale that applies to this step."""
    if not np.isfinite(sample):
      self.skipped += 1
      return self.scale
    self.bucket.append(float(sample))
    self.steps += 1
    if self.steps % self.test_every or self.steps < self.warmup_steps:
      return self.scale
    kept = self.kept()
    if len(kept) < self.min_samples:
      return self.scale
    stationary, *interval = batch_means_test(kept, self.significance, self.drops == 0)
    self.test = (self.steps, *interval)
    self.margin = min(self.margin, batch_means_test.margin)
    if stationary:
      self.drops += 1
      self.scale = np.float32(max(self.scale * np.float32(self.factor), self.min_scale))
      self.bucket = []
    return self.scale

# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The SASA+ test of :func:`reduce_on_stationarity`: a batch-means t interval, in float32."""

import math

import jax
import jax.numpy as jnp
import numpy as np

_F32_MAX = float(np.finfo(np.float32).max)
# Bisection steps of the t quantile: 64 halvings of [0, 1] reach every x the quantile needs to
# float32 resolution.
_BISECTION_STEPS = 64


def t_critical(significance, dof) -> jax.Array:
  """The two-sided Student t critical value: ``P(|T_dof| > t) = significance``.

  That is ``scipy.stats.t.ppf(1 - significance / 2, dof)``, in float32 and
  traceable in both arguments; within 2e-5 of it (relative) for a significance
  in [0.001, 0.5]. Below 32 degrees of freedom, ``P(|T| > t) = I_x(dof / 2,
  1 / 2)`` with ``x = dof / (dof + t^2)`` (the regularised incomplete beta
  function) rises with ``x``, which is found by bisection. From 32 on, where
  float32's incomplete beta loses digits, the Cornish-Fisher expansion around
  the normal quantile (Abramowitz and Stegun 26.7.5) is within 1e-6.

  Args:
    significance: the two-sided level, in (0, 1).
    dof: the degrees of freedom, positive.

  Returns:
    A float32 scalar.
  """
  sig = jnp.asarray(significance, jnp.float32)
  dof = jnp.asarray(dof, jnp.float32)
  a = dof / 2

  def halve(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) / 2
    below = jax.scipy.special.betainc(a, 0.5, mid) < sig
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  zero, one = jnp.zeros([], jnp.float32), jnp.ones([], jnp.float32)
  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (zero, one))
  x = (lo + hi) / 2
  small = jnp.sqrt(dof * (1 - x) / x)

  z = jax.scipy.special.ndtri(1 - sig / 2)
  z2 = z * z
  terms = (
      z * (z2 + 1) / 4,
      z * ((5 * z2 + 16) * z2 + 3) / 96,
      z * (((3 * z2 + 19) * z2 + 17) * z2 - 15) / 384,
      z * ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) / 92160,
  )
  large = z + sum(term / dof ** (i + 1) for i, term in enumerate(terms))
  return jnp.where(dof < 32, small, large)


def batch_means_test(samples, count, n, drops, significance):
  """The SASA+ test on the ``n`` most recent of the ``count`` samples in the ring.

  Returns (stationary, mean, lower, upper). The samples are divided by their
  largest magnitude first: the verdict does not change under a positive scale,
  and no sum or square can overflow whatever finite values the ring holds.
  """
  capacity = samples.shape[0]
  # The position of each slot among the kept samples, 0 for the oldest.
  age = (count - 1 - jnp.arange(capacity, dtype=jnp.int32)) % capacity
  pos = n - 1 - age
  kept = pos >= 0
  peak = jnp.max(jnp.where(kept, jnp.abs(samples), 0.0))
  peak = jnp.where(peak > 0, peak, 1.0)
  z = jnp.where(kept, samples / peak, 0.0)
  nf = n.astype(jnp.float32)
  mean = jnp.sum(z) / nf

  # Batch means: about sqrt(n) batches of b = floor(sqrt(n)) samples from the oldest on; a tail
  # shorter than a batch enters the mean but no batch.
  b = jnp.floor(jnp.sqrt(nf)).astype(jnp.int32)
  b = jnp.where(b * b > n, b - 1, b)
  b = jnp.where((b + 1) * (b + 1) <= n, b + 1, b)
  num_batches = n // b
  batch = jnp.where(kept, pos // b, -1)
  in_batch = kept & (batch < num_batches)
  segments = math.isqrt(capacity) + 3  # n < (b + 1)^2, so n // b <= b + 2
  sums = jax.ops.segment_sum(jnp.where(in_batch, z, 0.0), jnp.where(in_batch, batch, 0),
                             num_segments=segments)
  valid = jnp.arange(segments) < num_batches
  dev = jnp.where(valid, sums / b.astype(jnp.float32) - mean, 0.0)
  var = b.astype(jnp.float32) * jnp.sum(dev * dev) / (num_batches - 1).astype(jnp.float32)
  half_width = t_critical(significance, num_batches - 1) * jnp.sqrt(var / nf)

  half = n // 2
  first = kept & (pos < half)
  mean1 = jnp.sum(jnp.where(first, z, 0.0)) / half.astype(jnp.float32)
  mean2 = jnp.sum(jnp.where(kept & ~first, z, 0.0)) / (n - half).astype(jnp.float32)
  same_sign = ((mean1 > 0) & (mean2 > 0)) | ((mean1 < 0) & (mean2 < 0))
  lower, upper = mean - half_width, mean + half_width
  simple = (lower < 0) & (upper > 0) & same_sign
  # Before the first drop each half must pass on its own: the mean of a transient that crosses
  # 0 can sit near 0 while neither half does.
  composite = (jnp.abs(mean1) < half_width) & (jnp.abs(mean2) < half_width) & same_sign
  stationary = jnp.where(drops == 0, composite, simple)
  finite = lambda x: jnp.nan_to_num(jnp.clip(x * peak, -_F32_MAX, _F32_MAX))
  return stationary, finite(mean), finite(lower), finite(upper)

# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A learning-rate drop decided by a statistical test for stationarity (SASA+)."""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradvar_optax._batch_means import batch_means_test
from gradvar_optax._gradvar import _concrete
from gradvar_optax._stationarity_mask import MaskOrFn
from gradvar_optax._stationarity_mask import check_mask_leaves
from gradvar_optax._stationarity_mask import resolve_mask


class StationarityState(NamedTuple):
  """State of :func:`reduce_on_stationarity`.

  Every field has a fixed shape and dtype, so a jitted step never recompiles
  because of it, and every float stays finite.

  Attributes:
    samples: float32 ``[capacity]`` ring buffer of the finite samples
      ``delta`` since the last drop. Slot ``count % capacity`` is written next;
      a drop zeroes it.
    count: int32 number of finite samples since the last drop (saturates).
    steps: int32 number of finite steps since ``init`` (saturates): the clock of
      ``test_every`` and ``warmup_steps``.
    skipped: int32 number of steps whose sample was not finite.
    drops: int32 number of tests passed, each a drop of the scale.
    test_step: int32 value of ``steps`` at the latest test (0 before the first).
    test_mean: float32 mean of the samples at the latest test.
    test_lower: float32 lower end of the latest test's interval.
    test_upper: float32 upper end of the latest test's interval.
    lr_scale: float32 learning-rate multiplier, whatever the params' dtype.
    inner_state: the base optimizer's state.
  """

  samples: jax.Array
  count: jax.Array
  steps: jax.Array
  skipped: jax.Array
  drops: jax.Array
  test_step: jax.Array
  test_mean: jax.Array
  test_lower: jax.Array
  test_upper: jax.Array
  lr_scale: jax.Array
  inner_state: Any


def _is_int(value) -> bool:
  return not isinstance(value, bool) and float(value) == int(value)


def _validate(factor, test_every, min_samples, keep_fraction, significance, warmup_steps,
              min_scale, capacity):
  if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
    raise ValueError(
        f"capacity must be a Python int >= 16 (it sets the ring buffer's shape), got "
        f"{capacity!r}. With optax.inject_hyperparams, pass static_args=('capacity',)."
    )
  if capacity < 16:
    raise ValueError(f"capacity must be >= 16, got capacity={capacity}.")
  factor_ = _concrete(factor)
  if factor_ is not None and not 0.0 < factor_ < 1.0:
    raise ValueError(f"factor must be in (0, 1), got factor={factor_}.")
  every = _concrete(test_every)
  if every is not None and not (_is_int(test_every) and every >= 1):
    raise ValueError(f"test_every must be an integer >= 1, got test_every={test_every!r}.")
  least = _concrete(min_samples)
  if least is not None and not (_is_int(min_samples) and 16 <= least <= capacity):
    raise ValueError(
        f"min_samples must be an integer in [16, capacity={capacity}], got "
        f"min_samples={min_samples!r}."
    )
  keep = _concrete(keep_fraction)
  if keep is not None and not 0.0 < keep <= 1.0:
    raise ValueError(f"keep_fraction must be in (0, 1], got keep_fraction={keep}.")
  sig = _concrete(significance)
  if sig is not None and not 0.0 < sig < 1.0:
    raise ValueError(f"significance must be in (0, 1), got significance={sig}.")
  warm = _concrete(warmup_steps)
  if warm is not None and not (_is_int(warmup_steps) and warm >= 0):
    raise ValueError(
        f"warmup_steps must be an integer >= 0, got warmup_steps={warmup_steps!r}."
    )
  floor = _concrete(min_scale)
  if floor is not None and not 0.0 <= floor <= 1.0:
    raise ValueError(f"min_scale must be in [0, 1], got min_scale={floor}.")


def _delta(params, applied, mask=None) -> jax.Array:
  """-(<x, u> + |u|^2 / 2) = -<x + u / 2, u>, one pass, accumulated in float32.

  With a `mask` (a pytree of bools, the params' structure or a prefix of it), only the leaves
  under a True enter the sum.
  """
  def term(u, x):
    u = u.astype(jnp.float32)
    return jnp.sum((x.astype(jnp.float32) + 0.5 * u) * u)

  if mask is None:
    terms = jax.tree.leaves(jax.tree.map(term, applied, params))
  else:
    def masked(m, u, x):
      return jax.tree.leaves(jax.tree.map(term, u, x)) if m else []
    terms = [t for ts in jax.tree.leaves(jax.tree.map(masked, mask, applied, params),
                                         is_leaf=lambda v: isinstance(v, list)) for t in ts]
  return -sum(terms) if terms else jnp.zeros([], jnp.float32)


def reduce_on_stationarity(
    base_optimizer: optax.GradientTransformation,
    *,
    factor: float = 0.1,
    test_every: int = 100,
    min_samples: int = 100,
    keep_fraction: float = 1 / 8,
    significance: float = 0.05,
    warmup_steps: int = 0,
    min_scale: float = 0.0,
    capacity: int = 4096,
    axis_name: Optional[str] = None,
    mask: Optional[MaskOrFn] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Drops a base optimizer's learning rate by ``factor`` when a test finds it stationary.

  Call it as ``opt.update(grads, state, params)``: the statistic needs the
  params. ``reduce_on_stationarity(optax.adam(1e-3))`` steps as Adam with
  ``lr_scale = 1`` until the iterates stop travelling and only jitter (noise,
  not signal, drives them), then as Adam at ``factor`` times the learning rate,
  and so on. It needs no training horizon and no validation set.

  **The statistic** (SASA+, Lang et al. 2019; Zhang et al. 2020). With
  :math:`x_k` the params before step ``k`` and :math:`u_k` the update applied
  at step ``k`` (after scaling),

  .. math::
    \delta_k = -\big(\langle x_k, u_k\rangle + \tfrac12 |u_k|^2\big)
    = -\tfrac12\big(|x_{k+1}|^2 - |x_k|^2\big).

  At stationarity the distribution of :math:`|x|^2` no longer moves, so
  :math:`E\,\delta = 0`, whatever the update direction (Adam's included). While
  the iterates travel, :math:`\delta` is away from 0 on average: positive
  toward a minimum near the origin, negative while :math:`|x|^2` grows, so the
  test is two-sided. It is ``statopt``'s :math:`\langle x_{k+1}, d_k\rangle +
  \frac{\alpha}{2} |d_k|^2` (with :math:`u_k = -\alpha d_k`) times
  :math:`\alpha`, so the test between drops is the same. Cost: one fused pass
  over the params and the update per step.

  **A subset of the params** (``mask``). At stationarity :math:`E\,\delta_S = 0` holds for
  the statistic of any subset ``S`` of the coordinates as well, so the test may read only the
  params that can become stationary. Params that keep travelling whatever the noise (a random
  walk with no restoring force: Adam's embedding rows, or the norm of kernels that feed a
  normalisation layer, which grows under Adam without weight decay) keep :math:`\delta` of the
  whole away from 0, and the test never passes; ``mask`` leaves them out of the statistic
  (their updates are scaled like all the others). It follows ``optax.masked``'s convention: a
  pytree of bools with the params' structure (or a prefix of it), or a callable that returns
  one from the params; True means the test reads that param. A natural choice with
  ``optax.adamw(..., mask=m)`` is the same ``m``: the test reads the params that weight decay
  holds in place. A mask cannot help where every part of the model keeps moving (a small ResNet
  trained by Adam for a few epochs: its kernels, normalisation scales and head all grow).

  **The test.** The samples go into a leaky bucket that keeps the most recent
  ``ceil(keep_fraction * t)`` of the ``t`` samples since the last drop. Every ``test_every``
  finite steps, once it keeps ``n >= min_samples``: the mean, a batch-means variance (``b =
  floor(sqrt(n))`` samples per batch, ``floor(n / b)`` batches from the oldest on; a shorter
  tail enters the mean but no batch) and the two-sided t interval ``mean +- t * sqrt(var / n)``
  with ``t`` the ``1 - significance / 2`` quantile at ``floor(n / b) - 1`` degrees of freedom
  (``statopt`` uses ``b - 1``, up to two fewer). The iterates count as stationary when the
  interval contains 0 and the means of the bucket's older and newer halves have the same sign.
  Before the first drop the test is stricter: each half's mean, with the same half-width, must
  have an interval that contains 0 (and the signs agree), which guards against the mean crossing
  0 during the transient. On a pass, ``lr_scale`` is multiplied by ``factor`` (floored at
  ``min_scale``), ``drops`` grows by one and the bucket is emptied. With ``keep_fraction = 1/8``
  the first test comes after ``8 * min_samples`` steps at the earliest: size ``min_samples`` to
  the run. The batch means assume samples of a steady spread: a noise-free geometric decay fast
  enough that the bucket's first batch dominates can pass the test (on a quadratic shrinking x
  by 10% a step, ``keep_fraction=0.5`` passed at step 209, with ``|x|^2`` at 1e-17; 1/8 did
  not).

  **The bucket in a fixed shape.** A ``capacity``-slot ring buffer holds the
  last ``capacity`` samples and the test reads the newest ``n = min(ceil(
  keep_fraction * t), capacity)`` of them. Up to ``t = capacity /
  keep_fraction`` samples since the last drop (32768 steps by default) this is
  the leaky bucket exactly; past that the bucket stops growing and becomes a
  window of the last ``capacity`` samples.

  **Scale.** ``lr_scale`` is exactly 1.0 until the first drop and
  ``float32(factor)`` multiplied ``drops`` times after (with the default
  ``warmup_steps=0``, ``min_scale=0``). The base optimizer's *updates* are
  multiplied by it, as in :func:`gradvar`, and the returned updates are always
  ``base_updates * new_state.lr_scale``: a drop applies to the step that
  decided it (that step's sample is discarded with the bucket). The base
  optimizer's state (Adam's moments) is kept; ``statopt`` zeroes its momentum
  on a drop.

  **Non-finite steps.** A non-finite ``delta`` (from the gradients, the update
  or the params) never enters the bucket, never advances ``steps`` and never
  moves the scale; it only increments ``skipped``. The decisions therefore
  depend only on the sequence of finite samples. The base optimizer still
  receives the gradients: skipping the whole step is ``optax.apply_if_finite``'s
  job, outside this wrapper (inside, a skipped step's zero update would enter
  the bucket as a sample 0). Every float in the state stays finite.

  **Data parallelism.** ``delta`` is computed from the params and the update,
  which are replicated in the usual step (gradients averaged before the
  optimizer), and under ``jit`` over sharded global arrays it is one global
  value: every replica and host takes the same decision. If each replica hands
  in its own, not yet averaged, gradients, pass the mapped axis as
  ``axis_name``: ``delta`` is then averaged over it (``lax.pmean``).

  Args:
    base_optimizer: the optimizer whose step is scaled, e.g. ``optax.adam``.
      Extra keyword arguments of ``update`` are passed through to it.
    factor: multiplier of the scale on each drop, in (0, 1); 0.1 is the
      literature's (and the seed's) drop by 10.
    test_every: finite steps between tests (``statopt``'s ``testfreq``).
    min_samples: samples the bucket must keep before a test, an integer in
      ``[16, capacity]`` (``statopt``'s ``minN_stats``, which it floors at 100
      and defaults to 1000).
    keep_fraction: fraction of the samples since the last drop that the bucket
      keeps, in (0, 1] (``statopt``'s ``1 / leak_ratio``).
    significance: two-sided level of the t interval, in (0, 1).
    warmup_steps: no test before this many finite steps.
    min_scale: floor of the scale, in [0, 1]; tests still pass and count as
      drops once it holds.
    capacity: slots of the bucket's ring buffer, a static Python int >= 16.
    axis_name: for un-averaged per-replica gradients under ``pmap`` or
      ``shard_map``: ``delta`` is averaged over this axis.
    mask: which params the statistic reads (default: all). A pytree of Python
      bools with the structure of the params (or a prefix of it), or a callable
      ``params -> such a pytree``, as ``optax.masked`` and
      ``optax.add_decayed_weights`` take it; True: the test reads that param.
      At least one leaf must be True.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`StationarityState` with the base optimizer's state in
    ``inner_state``. Read it with :func:`lr_scale`, :func:`stationarity_drops`
    and :func:`stationarity_test`.

  Raises:
    ValueError: at construction, on an argument out of range, naming it (only
      concrete values are checked, so ``inject_hyperparams`` works with
      ``static_args=("capacity",)``); at ``update``, when ``params`` is None or
      ``mask`` does not fit them.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradvar_optax
    >>> opt = gradvar_optax.reduce_on_stationarity(
    ...     optax.sgd(0.1), test_every=20, min_samples=20)
    >>> params = {"w": jnp.full(4, 3.0)}
    >>> state = opt.init(params)
    >>> def step(carry, key):  # a noisy quadratic: gradient w + noise
    ...   params, state = carry
    ...   grads = {"w": params["w"] + jax.random.normal(key, (4,))}
    ...   updates, state = opt.update(grads, state, params)
    ...   return (optax.apply_updates(params, updates), state), None
    >>> keys = jax.random.split(jax.random.key(0), 300)
    >>> (params, state), _ = jax.lax.scan(step, (params, state), keys)
    >>> # The first test, at step 160, needs ceil(160 / 8) = 20 samples kept.
    >>> int(gradvar_optax.stationarity_drops(state))
    1
    >>> round(float(gradvar_optax.lr_scale(state)), 6)
    0.1
    >>> int(gradvar_optax.stationarity_test(state).step)  # the drop
    220

  References:
    Lang, Zhang and Xiao, `Using Statistics to Automate Stochastic Optimization
    <https://arxiv.org/abs/1909.09785>`_, NeurIPS 2019.

    Zhang, Lang, Liu and Xiao, `Statistical Adaptive Stochastic Gradient
    Methods <https://arxiv.org/abs/2002.10597>`_, 2020.

    Pflug, `On the determination of the step size in stochastic quasigradient
    methods`, IIASA, 1983.

    Reference code (PyTorch, SGD with momentum): ``microsoft/statopt``.
  """
  _validate(factor, test_every, min_samples, keep_fraction, significance, warmup_steps,
            min_scale, capacity)
  if mask is not None and not callable(mask):
    check_mask_leaves(mask, "")
  base_optimizer = optax.with_extra_args_support(base_optimizer)

  def init_fn(params) -> StationarityState:
    # One buffer per field: a step that donates the state must not see one buffer twice.
    int_zero = lambda: jnp.zeros([], jnp.int32)
    zero = lambda: jnp.zeros([], jnp.float32)
    return StationarityState(
        samples=jnp.zeros([capacity], jnp.float32),
        count=int_zero(),
        steps=int_zero(),
        skipped=int_zero(),
        drops=int_zero(),
        test_step=int_zero(),
        test_mean=zero(),
        test_lower=zero(),
        test_upper=zero(),
        lr_scale=jnp.ones([], jnp.float32),
        inner_state=base_optimizer.init(params),
    )

  def observe(state: StationarityState, delta: jax.Array) -> StationarityState:
    """Enters one sample and runs the test when it is due."""
    ok = jnp.isfinite(delta)
    samples = jnp.where(ok, state.samples.at[state.count % capacity].set(delta),
                        state.samples)
    count = jnp.where(ok, optax.safe_increment(state.count), state.count)
    steps = jnp.where(ok, optax.safe_increment(state.steps), state.steps)
    skipped = jnp.where(ok, state.skipped, optax.safe_increment(state.skipped))
    want = jnp.ceil(count.astype(jnp.float32) * jnp.asarray(keep_fraction, jnp.float32))
    n = jnp.minimum(want, jnp.float32(capacity)).astype(jnp.int32)
    n = jnp.clip(n, 0, count)
    due = ok & (steps % test_every == 0) & (steps >= warmup_steps) & (n >= min_samples)

    def run(_):
      return batch_means_test(samples, count, n, state.drops, significance)

    def skip(_):
      return (jnp.zeros([], bool), state.test_mean, state.test_lower, state.test_upper)

    stationary, mean, lower, upper = jax.lax.cond(due, run, skip, None)
    drop = due & stationary
    scale = jnp.maximum(state.lr_scale * jnp.asarray(factor, jnp.float32), min_scale)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return state._replace(
        samples=jnp.where(drop, jnp.zeros_like(samples), samples),
        count=jnp.where(drop, 0, count),
        steps=steps,
        skipped=skipped,
        drops=jnp.where(drop, optax.safe_increment(state.drops), state.drops),
        test_step=jnp.where(due, steps, state.test_step),
        test_mean=f32(mean),
        test_lower=f32(lower),
        test_upper=f32(upper),
        lr_scale=f32(jnp.where(drop, scale, state.lr_scale)),
    )

  def update_fn(updates, state: StationarityState, params=None, **extra_args):
    if params is None:
      raise ValueError(
          "reduce_on_stationarity needs the params: call update(grads, state, params). Its "
          "statistic is -(<x, u> + |u|^2 / 2) from the params x and the update u."
      )
    inner_updates, inner_state = base_optimizer.update(
        updates, state.inner_state, params, **extra_args
    )
    # As in gradvar: the barrier keeps the statistic's reduction out of the base optimizer's
    # elementwise loop (XLA:CPU fuses them into a slower loop) and leaves that update's code
    # the plain optimizer's.
    inner_updates, params = jax.lax.optimization_barrier((inner_updates, params))
    old = state.lr_scale
    applied = jax.tree.map(lambda u: u * old.astype(u.dtype), inner_updates)
    delta = _delta(params, applied, resolve_mask(mask, params))
    if axis_name is not None:
      delta = jax.lax.pmean(delta, axis_name)
    state = observe(state, delta)
    scale = state.lr_scale
    inner_updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), inner_updates)
    return inner_updates, state._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

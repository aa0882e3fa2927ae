# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""A learning-rate scale driven by the variability of the gradient norm."""

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradvar_optax._numerics import global_norm

# The decision hook of the private `_gradvar`: (v, reference, count) -> the multiplier of the
# scale at a decision (count: the finite steps seen, this one included).
Decision = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class GradVarState(NamedTuple):
  """State of :func:`gradvar` and :func:`scale_by_gradvar`.

  Every field has a fixed shape and dtype, so a jitted step never recompiles
  because of it.

  Attributes:
    norms: float32 ``[window]`` ring buffer of the last ``window`` finite
      gradient norms. Slot ``count % window`` is written next.
    count: int32 number of finite norms seen (saturates at the int32 max).
    skipped: int32 number of steps whose gradient norm was not finite.
    variability: float32 coefficient of variation of the buffer at the latest
      decision (0 before the first one).
    reference: float32 value the next window's variability is compared with:
      the previous window's variability by default, or a moving average of past
      variabilities when ``smoothing > 0``.
    lr_scale: float32 learning-rate multiplier, whatever the params' dtype.
    inner_state: the base optimizer's state (``optax.EmptyState()`` for
      :func:`scale_by_gradvar`).
  """

  norms: jax.Array
  count: jax.Array
  skipped: jax.Array
  variability: jax.Array
  reference: jax.Array
  lr_scale: jax.Array
  inner_state: Any


def _concrete(value: Any) -> Optional[float]:
  """The float value of a hyperparameter, or None while it is traced.

  ``optax.inject_hyperparams`` calls the constructor with traced arrays inside
  ``jit``; those were checked when they were concrete.
  """
  if isinstance(value, jax.core.Tracer):
    return None
  return float(np.asarray(value))


def _require_base(base_optimizer, name: str) -> None:
  """A TypeError that shows the wrapper form, for `chain(gradvar(), adam())` and the like."""
  if base_optimizer is None or not (hasattr(base_optimizer, "init")
                                    and hasattr(base_optimizer, "update")):
    raise TypeError(
        f"{name}() wraps the optimizer whose step it scales: write "
        f"{name}(optax.adam(1e-3)), not optax.chain({name}(), optax.adam(1e-3)); "
        f"got base_optimizer={base_optimizer!r}. A scale chained before Adam would "
        "cancel in Adam's normalisation (see the README)."
    )


def _validate(window, factor, min_scale, max_scale, tolerance, smoothing, eps):
  if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
    raise ValueError(
        f"window must be a Python int >= 2 (it sets the buffer's shape), got "
        f"{window!r}. With optax.inject_hyperparams, pass "
        "static_args=('window',)."
    )
  if window < 2:
    raise ValueError(f"window must be >= 2, got window={window}.")
  factor_, lo, hi = _concrete(factor), _concrete(min_scale), _concrete(max_scale)
  if factor_ is not None and not 0.0 < factor_ < 1.0:
    raise ValueError(f"factor must be in (0, 1), got factor={factor_}.")
  if lo is not None and not lo > 0.0:
    raise ValueError(f"min_scale must be positive, got min_scale={lo}.")
  if hi is not None and not hi > 0.0:
    raise ValueError(f"max_scale must be positive, got max_scale={hi}.")
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(
        f"min_scale must be <= max_scale, got min_scale={lo} > max_scale={hi}."
    )
  tol = _concrete(tolerance)
  if tol is not None and not 0.0 <= tol < 1.0:
    raise ValueError(f"tolerance must be in [0, 1), got tolerance={tol}.")
  smooth = _concrete(smoothing)
  if smooth is not None and not 0.0 <= smooth < 1.0:
    raise ValueError(f"smoothing must be in [0, 1), got smoothing={smooth}.")
  eps_ = _concrete(eps)
  if eps_ is not None and not eps_ > 0.0:
    raise ValueError(f"eps must be positive, got eps={eps_}.")


def gradvar(
    base_optimizer: Optional[optax.GradientTransformation] = None,
    *,
    window: int = 5,
    factor: float = 0.1,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
    tolerance: float = 0.0,
    smoothing: float = 0.0,
    eps: float = 1e-12,
    axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales a base optimizer's step by a factor set from gradient variability.

  The seed's rule: watch the global norm of the raw gradients over windows of
  ``window`` batches. Every ``window`` finite steps, compute the coefficient of
  variation of the last ``window`` norms,

  .. math::
    v = \mathrm{std}(n_1, \dots, n_w) / (\mathrm{mean}(n_1, \dots, n_w) +
    \epsilon),

  which does not depend on the gradients' overall scale. From the second
  decision on, if ``v`` rose against the previous window's, the learning-rate
  scale is multiplied by ``1 - factor``; if it fell, by ``1 + factor``; if it is
  exactly equal (constant or zero gradients) it is kept. The scale is then
  clipped to ``[min_scale, max_scale]``. With the default ``factor=0.1`` the
  steps are x0.9 and x1.1 (the seed's "factor 0.1" means 10% steps, not x0.1).
  Note that x0.9 then x1.1 gives 0.99: alternating decisions drift slightly
  downward.

  **Placement.** The gradients are measured raw, passed *unchanged* to
  ``base_optimizer.update``, and the base optimizer's *updates* are multiplied
  by the scale, so the effective learning rate is ``base_lr * lr_scale``.
  A factor applied to the gradients *before* Adam would have no lasting effect:
  Adam divides by a running RMS of its input, so a constant input scale cancels
  (see :func:`scale_by_gradvar`). This wrapper is what the design card's
  ``optax.chain(gradvar(), adam())`` means. With ``optax.adamw`` the decoupled
  weight decay is part of the update, so it is scaled too.

  **Timing.** A new scale applies to the updates of the very step that decides
  it: the returned updates are always ``base_updates * new_state.lr_scale``.

  **Non-finite gradients.** A non-finite norm is never written to the buffer,
  never advances the window and never moves the scale; it only increments
  ``skipped``. The base optimizer still receives the gradients as they are:
  skipping the whole step is ``optax.apply_if_finite``'s job, and
  ``optax.apply_if_finite(gradvar(...), n)`` composes.

  **Data parallelism.** In the usual step the gradients are averaged across
  replicas (``lax.pmean``) before the optimizer, so every replica measures the
  same norm and holds the same state: no ``axis_name`` is needed. If instead
  each replica hands in its own, not yet averaged, gradients, pass the mapped
  axis as ``axis_name``: the per-replica norms are averaged over that axis so
  every replica still takes the same decisions. That norm then includes the
  between-replica noise, and the base optimizer sees un-averaged gradients,
  which is the caller's choice. :func:`gns`'s ``axis_name`` means something
  else: it averages the gradient itself (and its squared norm) over the axis,
  and hands the base optimizer the averaged gradient.

  Args:
    base_optimizer: the optimizer whose step is scaled, e.g. ``optax.adam``.
      Extra keyword arguments of ``update`` (such as ``value=`` for
      ``optax.contrib.reduce_on_plateau``) are passed through to it.
    window: number of finite steps per variability window, and the decision
      period (the seed's 5). A static Python int >= 2.
    factor: relative size of each adjustment, in (0, 1): ``0.1`` moves the
      scale by x0.9 or x1.1. Not ``optax.contrib.reduce_on_plateau``'s
      ``factor``, which multiplies the learning rate by itself (``0.1``: x0.1).
    min_scale: lower bound of the scale. The seed gives none; an unbounded
      scale either dies (about 22 net "rose" decisions take it below 0.1) or
      diverges. The default keeps it within one decade either side of the base
      learning rate the user tuned: a multiplier, not a replacement for it.
    max_scale: upper bound of the scale (default 10, see ``min_scale``).
    tolerance: relative dead-band. ``v`` must exceed the reference by more than
      ``tolerance * reference`` to count as a rise (likewise for a fall). The
      seed's rule is ``0``.
    smoothing: decay of the reference that ``v`` is compared with. ``0`` (the
      seed's rule) compares with the previous window; ``0.9`` compares with a
      slow exponential moving average of past variabilities.
    eps: added to the mean norm so that all-zero gradients give ``v = 0``.
    axis_name: for un-averaged per-replica gradients under ``pmap`` or
      ``shard_map``: averages only the measured norm over this axis; the base
      optimizer still receives each replica's own gradients (unlike
      :func:`gns`'s ``axis_name``, which averages the gradients).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GradVarState` with the base optimizer's state in ``inner_state``.

  Raises:
    ValueError: on an argument out of range, naming it. Only concrete values
      are checked, so ``optax.inject_hyperparams(gradvar,
      static_args=("window",))`` works with injectable ``factor`` and bounds.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import gradvar_optax
    >>> opt = gradvar_optax.gradvar(optax.adam(1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> state = opt.init(params)
    >>> for _ in range(10):
    ...   grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    ...   updates, state = opt.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> # Two windows: the second one's norms varied more, so the scale fell 10%.
    >>> round(float(gradvar_optax.lr_scale(state)), 4)
    0.9

  References:
    The seed experiment report of this project: learning rate adjusted every 5
    batches from the variability of the gradients, by a factor of 0.1.
  """
  _require_base(base_optimizer, "gradvar")
  _validate(window, factor, min_scale, max_scale, tolerance, smoothing, eps)

  def by_variability(v, reference, count):
    del count
    rose = v > reference * (1 + tolerance)
    fell = v < reference * (1 - tolerance)
    return jnp.where(rose, 1 - factor, jnp.where(fell, 1 + factor, 1.0))

  return _gradvar(base_optimizer, by_variability, window=window, min_scale=min_scale,
                  max_scale=max_scale, smoothing=smoothing, eps=eps, axis_name=axis_name)


def _gradvar(
    base_optimizer: optax.GradientTransformation,
    decision: Decision,
    *,
    window: int,
    min_scale: float,
    max_scale: float,
    smoothing: float,
    eps: float,
    axis_name: Optional[str],
) -> optax.GradientTransformationExtraArgs:
  """gradvar's state machine with the decision as a hook; the arguments are checked already.

  Everything but the direction of a move is here: the raw gradients' global norm, the ring
  buffer of finite norms, a decision every ``window`` finite steps, the first one keeping the
  scale, the clip to ``[min_scale, max_scale]`` and the new scale applied to the very step that
  decides it. ``decision(v, reference, count)`` gives the multiplier of the scale at a
  decision: :func:`gradvar`'s compares ``v`` with the reference; the suite's null control
  (``train/controls.py``) draws a coin from ``count``.
  """
  base_optimizer = optax.with_extra_args_support(base_optimizer)

  def init_fn(params) -> GradVarState:
    return GradVarState(
        norms=jnp.zeros([window], jnp.float32),
        count=jnp.zeros([], jnp.int32),
        skipped=jnp.zeros([], jnp.int32),
        variability=jnp.zeros([], jnp.float32),
        reference=jnp.zeros([], jnp.float32),
        lr_scale=jnp.clip(
            jnp.ones([], jnp.float32), min_scale, max_scale
        ).astype(jnp.float32),
        inner_state=base_optimizer.init(params),
    )

  def observe(state: GradVarState, norm: jax.Array) -> GradVarState:
    """Enters one gradient norm and takes the decision when a window is full."""
    finite = jnp.isfinite(norm)
    norms = jnp.where(
        finite, state.norms.at[state.count % window].set(norm), state.norms
    )
    count = jnp.where(finite, optax.safe_increment(state.count), state.count)
    skipped = jnp.where(
        finite, state.skipped, optax.safe_increment(state.skipped)
    )
    decide = finite & (count % window == 0)
    # The first decision has no earlier window to compare with.
    has_reference = count > window

    mean = jnp.mean(norms)
    v = jnp.std(norms) / (mean + eps)
    ref = state.reference
    multiplier = decision(v, ref, count)
    moved = jnp.clip(state.lr_scale * multiplier, min_scale, max_scale)
    lr_scale = jnp.where(decide & has_reference, moved, state.lr_scale)
    new_ref = jnp.where(has_reference, smoothing * ref + (1 - smoothing) * v, v)
    f32 = lambda x: x.astype(jnp.float32)
    return state._replace(
        norms=norms,
        count=count,
        skipped=skipped,
        variability=f32(jnp.where(decide, v, state.variability)),
        reference=f32(jnp.where(decide, new_ref, ref)),
        lr_scale=f32(lr_scale),
    )

  def update_fn(updates, state: GradVarState, params=None, **extra_args):
    inner_updates, inner_state = base_optimizer.update(
        updates, state.inner_state, params, **extra_args
    )
    # The barrier keeps the norm's reduction out of the base optimizer's
    # elementwise loop: XLA:CPU fuses the two into one loop that runs about 2x
    # slower than the passes apart (benchmarks/perf/optimizer_overhead.py). Reading the norm
    # after the base update, rather than before, also keeps that update's code
    # identical to the plain optimizer's, so pmap and shard_map stay bitwise
    # equal (tests/test_gradvar_parallel.py).
    inner_updates, updates = jax.lax.optimization_barrier((inner_updates, updates))
    norm = global_norm(updates)
    if axis_name is not None:
      norm = jax.lax.pmean(norm, axis_name)
    state = observe(state, norm)
    scale = state.lr_scale
    inner_updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), inner_updates)
    return inner_updates, state._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_gradvar(
    *,
    window: int = 5,
    factor: float = 0.1,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
    tolerance: float = 0.0,
    smoothing: float = 0.0,
    eps: float = 1e-12,
    axis_name: Optional[str] = None,
) -> optax.GradientTransformationExtraArgs:
  """The chainable form: measures its input and scales it by the LR scale.

  Before Adam it barely changes Adam's step: use ``gradvar(optax.adam(lr))``.
  It runs the same rule as :func:`gradvar` (see there for every argument) on
  whatever it receives, and multiplies that by ``lr_scale``.

  * Before a scale-equivariant optimizer (``optax.sgd``, momentum) it is an
    exact learning-rate multiplier: ``chain(scale_by_gradvar(), sgd(lr))``
    steps by ``lr * lr_scale * g``.
  * Before Adam (or any optimizer that divides by a running RMS of its input)
    it is *not* one: Adam's step depends on how fast the scale moves, not on
    its value, and returns to plain Adam's once the scale holds still. Use
    :func:`gradvar` to scale Adam's step.
  * After an optimizer, ``chain(adam(lr), scale_by_gradvar())`` does scale the
    step, but it then measures the optimizer's output, not the gradients.

  Args:
    window: see :func:`gradvar`.
    factor: see :func:`gradvar`.
    min_scale: see :func:`gradvar`.
    max_scale: see :func:`gradvar`.
    tolerance: see :func:`gradvar`.
    smoothing: see :func:`gradvar`.
    eps: see :func:`gradvar`.
    axis_name: see :func:`gradvar`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with a :class:`GradVarState`
    whose ``inner_state`` is ``optax.EmptyState()``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import gradvar_optax
    >>> opt = optax.chain(gradvar_optax.scale_by_gradvar(), optax.sgd(0.1))
    >>> state = opt.init({"w": jnp.ones(3)})
  """
  return gradvar(
      optax.identity(),
      window=window,
      factor=factor,
      min_scale=min_scale,
      max_scale=max_scale,
      tolerance=tolerance,
      smoothing=smoothing,
      eps=eps,
      axis_name=axis_name,
  )

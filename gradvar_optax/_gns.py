# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
r"""A learning-rate scale set from the gradient noise scale (McCandlish et al. 2018).

How :func:`gns` works; its docstring says how to call it.

**The estimator.** ``N >= 2`` groups (replicas, or microbatches of one
batch) each compute a gradient :math:`g_i` on the same number of examples;
:math:`\bar g = \mathrm{mean}_i\, g_i` and :math:`q = \mathrm{mean}_i
|g_i|^2`. Then

.. math::
  S = \frac{N (q - |\bar g|^2)}{N - 1}, \qquad
  G^2 = \frac{N |\bar g|^2 - q}{N - 1}

are unbiased estimates of :math:`\mathrm{tr}\,\mathrm{Cov}(g_i)`, one group's
gradient noise, and of :math:`|E g|^2`, and :math:`G^2 + S/N = |\bar g|^2`
exactly. ``r = (S/N) / G^2`` estimates :math:`B_\mathrm{simple} /
B_\mathrm{global}`, the global batch's noise-to-signal ratio, with
:math:`B_\mathrm{simple} = \mathrm{tr}(\Sigma) / |G|^2` (McCandlish et al.
2018); it equals their :math:`B_\mathrm{noise}` only when the Hessian is
proportional to the identity. The signal fraction is :math:`\phi = G^2 /
|\bar g|^2 = 1 / (1 + r)`. The groups' gradients must be independent: with
BatchNorm, each group is normalised over its own examples (see
:func:`grouped_grad`), not over the whole batch.

**Smoothing.** Each finite step enters :math:`G^2` and :math:`|\bar g|^2` in
two exponential moving averages of decay ``decay``, bias-corrected by their
common weight ``1 - decay ** count``. The *smoothed* values are clipped, not
each step's (a single step's :math:`G^2` is often negative), so the averages
stay unbiased: :math:`\phi` is the ratio of the averages with :math:`G^2`
clipped at 0, then clipped to ``[0, 1]``, and ``r = (1 - phi) / phi`` with
:math:`\phi` floored at float32's epsilon. Both floors are relative, so
multiplying the loss by a constant leaves ``r`` and the scale unchanged. If
every finite step so far had all-zero gradients, :math:`\phi = 1` and
``r = 0``. When the true gradient is zero (pure noise), the smoothed
:math:`G^2` hovers around 0: :math:`\phi` falls to about 0 (exactly 0 where
the smoothed :math:`G^2` is negative) and ``r`` becomes very large (at most
about 8e6); if that holds at the end of the warmup, the scale stays 1 (see
below).

**The rule.** The scale is 1 for the first ``warmup_steps`` finite steps. At
the last of them, :math:`\phi_\mathrm{ref}` is frozen at the smoothed
:math:`\phi`; from then on

.. math::
  \mathrm{lr\_scale} = \mathrm{clip}((\phi_t / \phi_\mathrm{ref})^{p},
  \mathrm{min\_scale}, \mathrm{max\_scale})
  = \mathrm{clip}\Big(\Big(\frac{1 + r_\mathrm{ref}}{1 + r_t}\Big)^{p},
  \dots\Big).

If :math:`\phi_\mathrm{ref}` is 0 (the warmup saw no signal at all), the
scale stays 1 for good. The learning rate thus anneals as the noise comes to
dominate the signal. The motivation is McCandlish et al.'s
:math:`\epsilon_\mathrm{opt}(B) = \epsilon_\mathrm{max} / (1 +
B_\mathrm{noise}/B)`, the best SGD step at batch size ``B`` at one point of
training. Using it *across* training at a fixed batch also assumes that
:math:`\epsilon_\mathrm{max} = |G|^2 / G^T H G` stays constant: that is a
hypothesis, which no source validates; the project's benchmarks test it. The
default ``power=0.5`` follows the square-root scaling rule for Adam (Malladi
et al. 2022) and adaptdl's AdamScale. adaptdl measures the norms in Adam's
preconditioned metric; ``gns`` uses the raw gradients, so that ``r`` is the
noise scale as defined above, readable as a critical batch size
(:func:`noise_scale`) and independent of the base optimizer and its state.

**Placement.** As in :func:`gradvar`, the base optimizer's *updates* are
multiplied by the scale, so the effective learning rate is ``base_lr *
lr_scale``; the new scale applies to the step that computed it. ``gns`` must
see the gradients before any clipping: put ``optax.clip_by_global_norm``
inside the base optimizer, not before ``gns``.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradvar_optax._gradvar import _concrete
from gradvar_optax._gradvar import _require_base
from gradvar_optax._groups import GroupedGrads
from gradvar_optax._numerics import global_norm as _global_norm

# The smallest signal fraction the noise-to-signal ratio divides by. It is a ratio of two
# averages of squared norms, so this floor is relative to the gradients' scale: multiplying the
# loss by c leaves r unchanged. It caps r at about 8e6 when the smoothed signal is zero.
_PHI_FLOOR = float(np.finfo(np.float32).eps)


class GNSState(NamedTuple):
  """State of :func:`gns`.

  Every field has a fixed shape and dtype, so a jitted step never recompiles
  because of it.

  Attributes:
    count: int32 number of finite steps, those that entered the averages
      (saturates at the int32 max).
    skipped: int32 number of steps whose ``group_sq_norm`` was negative or not
      finite, whose mean gradient was not finite, or whose traced ``num_groups``
      was below 1. (A traced ``num_groups`` of 1 is a step without groups: it
      counts in neither.)
    signal_ema: float32 moving average (not bias-corrected) of the per-step
      estimates ``G^2`` of the true gradient's squared norm.
    sq_norm_ema: float32 moving average (not bias-corrected) of the mean
      gradient's squared norm ``|g_mean|^2``.
    noise_to_signal: float32 smoothed noise-to-signal ratio ``r`` of the global
      batch (0 before the first finite step).
    signal_fraction_ref: float32 smoothed signal fraction ``phi_ref`` frozen at
      the end of the warmup (0 until then).
    lr_scale: float32 learning-rate multiplier, whatever the params' dtype.
    inner_state: the base optimizer's state.
  """

  count: jax.Array
  skipped: jax.Array
  signal_ema: jax.Array
  sq_norm_ema: jax.Array
  noise_to_signal: jax.Array
  signal_fraction_ref: jax.Array
  lr_scale: jax.Array
  inner_state: Any


def _validate(decay, power, warmup_steps, min_scale, max_scale):
  decay_ = _concrete(decay)
  if decay_ is not None and not 0.0 <= decay_ < 1.0:
    raise ValueError(f"decay must be in [0, 1), got decay={decay_}.")
  power_ = _concrete(power)
  if power_ is not None and not (np.isfinite(power_) and power_ > 0.0):
    raise ValueError(f"power must be positive and finite, got power={power_}.")
  if isinstance(warmup_steps, bool):
    raise ValueError(f"warmup_steps must be an integer >= 1, got {warmup_steps!r}.")
  warmup = _concrete(warmup_steps)
  if warmup is not None and not (warmup >= 1 and warmup == int(warmup)):
    raise ValueError(f"warmup_steps must be an integer >= 1, got warmup_steps={warmup_steps!r}.")
  lo, hi = _concrete(min_scale), _concrete(max_scale)
  # The scale is 1 during the warmup, so 1 must lie within the bounds.
  if lo is not None and not 0.0 < lo <= 1.0:
    raise ValueError(f"min_scale must be in (0, 1], got min_scale={lo}.")
  if hi is not None and not (np.isfinite(hi) and hi >= 1.0):
    raise ValueError(f"max_scale must be finite and >= 1, got max_scale={hi}.")


def _check_scalar(value, name="group_sq_norm"):
  """Refuses, at trace time, a value that is not one real number."""
  leaves = jax.tree.leaves(value)
  ok = (len(leaves) == 1 and leaves[0] is value and jnp.shape(value) == ()
        and not jnp.issubdtype(jnp.result_type(value), jnp.complexfloating))
  if not ok:
    shape = jax.tree.map(jnp.shape, value) if leaves else value
    raise ValueError(
        f"gns: {name} must be a scalar, the mean over the groups of each one's "
        f"squared gradient norm (num_groups: their count); got {type(value).__name__} "
        f"of shape {shape}."
    )


def _sq_norm(tree) -> jax.Array:
  """Squared L2 norm of all leaves, in float32 whatever their dtype."""
  return jnp.square(_global_norm(tree))


def _signal_fraction(signal_ema, sq_norm_ema):
  """phi = G^2 / |g_mean|^2 from the two averages, clipped to [0, 1].

  The averages share one bias correction, which cancels in the ratio. A mean
  gradient that was always exactly zero carries no signal (phi = 0) if the
  groups' gradients were not (G^2 < 0), and no noise either (phi = 1) if every
  gradient was zero.
  """
  has_norm = sq_norm_ema > 0
  ratio = jnp.maximum(signal_ema, 0.0) / jnp.where(has_norm, sq_norm_ema, 1.0)
  without_norm = jnp.where(signal_ema < 0, 0.0, 1.0)
  return jnp.where(has_norm, jnp.clip(ratio, 0.0, 1.0), without_norm)


def gns(
    base_optimizer: Optional[optax.GradientTransformation] = None,
    *,
    axis_name: Optional[str] = None,
    decay: float = 0.99,
    power: float = 0.5,
    warmup_steps: int = 100,
    min_scale: float = 0.01,
    max_scale: float = 1.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales a base optimizer's step by a factor set from the gradient noise.

  Hand ``update`` the gradients of ``N >= 2`` equal groups (microbatches or
  replicas) in one of three forms:

  * a :class:`GroupedGrads` from :func:`grouped_grad`, in place of the
    gradients: ``opt.update(grouped_grad(loss_fn, 4)(params, x, y), state,
    params)``. Nothing else to pass; this is the form for ``optax.chain``,
    Linen's ``TrainState.apply_gradients(grads=g)``, ``inject_hyperparams``
    and ``gns(optax.MultiSteps(base, k))``; for ``nnx.Optimizer`` pass
    ``optimizer.update(model, g.grads, **g.extra_args)``.
  * ``update(grads, state, params, group_sq_norm=q, num_groups=N)``: ``grads``
    the mean gradient, ``q`` the float32 scalar mean over the groups of each
    group's squared norm (taken before any averaging), ``N >= 2``.
  * ``gns(base, axis_name=...)`` under ``jax.pmap``, or ``jax.shard_map`` with
    ``check_vma=False``: each replica hands in its own **un-averaged**
    gradient; ``gns`` averages it (``lax.pmean``) with its squared norm. The
    caller must not ``pmean`` first. With ``group_sq_norm`` and ``num_groups``
    (or a :class:`GroupedGrads`) too, the groups are replicas x microbatches.

  ``gns`` smooths the groups' estimates of the noise ``S`` and the signal
  ``G^2`` apart, reads the global batch's noise-to-signal ratio ``r = (S/N) /
  G^2`` (:func:`noise_to_signal`; ``r * B`` is the noise scale,
  :func:`noise_scale`), and after ``warmup_steps`` finite steps multiplies the
  base optimizer's *updates* by ``clip(((1 + r_ref) / (1 + r_t)) ** power,
  min_scale, max_scale)``, with ``r_ref`` frozen at the end of the warmup: the
  step anneals as noise comes to dominate. The module docstring
  (``help(gradvar_optax._gns)``) gives the derivation and its references.

  Notes:

  * The groups must hold equal numbers of examples, and their gradients must
    be independent: with BatchNorm, each group normalised over its own
    examples. Put clipping inside the base optimizer, not before ``gns``.
  * A step whose ``q`` is negative or not finite, or whose mean gradient or
    estimate is not finite, is counted in ``skipped`` and moves nothing; the
    base optimizer still gets the gradients. ``q`` of another shape than a
    scalar is refused when traced.
  * Groups on some steps only: a step whose traced ``num_groups`` is 1 (for
    example ``jnp.where(step % k == 0, N, 1)``, with ``q = |grads|^2`` on the
    others) leaves the averages, the ratio and the scale as they were and is
    counted nowhere; the base optimizer steps at the current scale.
    ``decay`` and ``warmup_steps`` then count observed steps only:
    ``warmup_steps // k`` keeps the warmup's span in steps. The same
    ``decay`` keeps the averages' variance and stretches their span k times;
    ``decay ** k`` keeps the span from k times fewer observations, noisier.
  * Nesting: ``gns(optax.apply_if_finite(base, n))`` and
    ``gns(optax.MultiSteps(base, k))``, not the other way round (outside,
    ``MultiSteps`` would pair the last mini-step's ``q`` with an accumulated
    gradient, and ``apply_if_finite`` cannot zero a :class:`GroupedGrads`).
  * :func:`gradvar`'s ``axis_name`` averages only the measured norm; this one
    averages the gradient.

  Args:
    base_optimizer: the optimizer whose step is scaled, e.g. ``optax.adam``.
      Its other extra arguments of ``update`` are passed through to it;
      ``group_sq_norm`` and ``num_groups`` are not.
    axis_name: the ``pmap`` / ``shard_map`` axis of the replicas, for
      un-averaged per-replica gradients, which ``gns`` averages (see above;
      :func:`gradvar`'s ``axis_name`` averages only the norm). ``None``: the
      groups come from ``group_sq_norm`` and ``num_groups``.
    decay: decay of the moving averages, in [0, 1); 0 uses each step alone.
    power: exponent ``p`` of the rule, positive.
    warmup_steps: number of finite steps before the scale first moves; an
      integer >= 1.
    min_scale: lower bound of the scale, in (0, 1].
    max_scale: upper bound of the scale, >= 1. The default 1 only lets the
      scale fall below the base learning rate the user tuned.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GNSState` with the base optimizer's state in ``inner_state``.

  Raises:
    ValueError: at construction, on an argument out of range, naming it (only
      concrete values are checked, so ``inject_hyperparams`` works); at
      ``update``, when no groups are supplied, saying how to supply them.

  Example:
    >>> import jax.numpy as jnp, optax, gradvar_optax
    >>> opt = gradvar_optax.gns(optax.adam(1e-3), warmup_steps=2)
    >>> params = {"w": jnp.ones(2)}
    >>> state = opt.init(params)
    >>> # Two groups, e.g. the two halves of a batch: their mean and q.
    >>> g1, g2 = jnp.array([3.0, 1.0]), jnp.array([1.0, -1.0])
    >>> grads = {"w": (g1 + g2) / 2}
    >>> q = (jnp.sum(g1 ** 2) + jnp.sum(g2 ** 2)) / 2
    >>> updates, state = opt.update(grads, state, params, group_sq_norm=q,
    ...                             num_groups=2)
    >>> # |g_mean|^2 = 4 and q = 6: S = 2 (6 - 4) = 4, G^2 = 2 * 4 - 6 = 2.
    >>> float(gradvar_optax.noise_to_signal(state))  # (S / 2) / G^2
    1.0
    >>> float(gradvar_optax.noise_scale(state, batch_size=64))  # r * 64
    64.0

  References:
    McCandlish, Kaplan, Amodei and the OpenAI Dota Team, `An Empirical Model
    of Large-Batch Training <https://arxiv.org/abs/1812.06162>`_, 2018.

    Johnson, Agrawal, Gu and Guestrin, `AdaScale SGD: A User-Friendly
    Algorithm for Distributed Training <https://arxiv.org/abs/2007.05105>`_,
    2020.

    Malladi, Lyu, Panigrahi and Arora, `On the SDEs and Scaling Rules for
    Adaptive Gradient Algorithms <https://arxiv.org/abs/2205.10287>`_, 2022.
  """
  _require_base(base_optimizer, "gns")
  _validate(decay, power, warmup_steps, min_scale, max_scale)
  base_optimizer = optax.with_extra_args_support(base_optimizer)

  def init_fn(params) -> GNSState:
    # One buffer per field: a step that donates the state must not see one buffer twice.
    zero = lambda: jnp.zeros([], jnp.float32)
    return GNSState(
        count=jnp.zeros([], jnp.int32),
        skipped=jnp.zeros([], jnp.int32),
        signal_ema=zero(),
        sq_norm_ema=zero(),
        noise_to_signal=zero(),
        signal_fraction_ref=zero(),
        lr_scale=jnp.ones([], jnp.float32),
        inner_state=base_optimizer.init(params),
    )

  def observe(state: GNSState, sq_norm, group_sq_norm, num_groups) -> GNSState:
    """Enters one step's groups into the averages and sets the scale."""
    n = jnp.asarray(num_groups, jnp.float32)
    q = jnp.asarray(group_sq_norm, jnp.float32)
    signal = (n * sq_norm - q) / (n - 1)
    ok = ((n >= 2) & jnp.isfinite(q) & (q >= 0) & jnp.isfinite(sq_norm)
          & jnp.isfinite(signal))
    # One group (the batch itself) is a step without groups: it holds, and counts nowhere.
    held = n == 1
    count = jnp.where(ok, optax.safe_increment(state.count), state.count)
    skipped = jnp.where(ok | held, state.skipped, optax.safe_increment(state.skipped))

    def ema(old, new):
      return jnp.where(ok, decay * old + (1 - decay) * new, old)

    signal_ema = ema(state.signal_ema, signal)
    sq_norm_ema = ema(state.sq_norm_ema, sq_norm)
    phi = _signal_fraction(signal_ema, sq_norm_ema)
    noise_to_signal = (1 - phi) / jnp.maximum(phi, _PHI_FLOOR)
    phi_ref = jnp.where(ok & (count == warmup_steps), phi, state.signal_fraction_ref)
    # Before the end of the warmup phi_ref is 0, as it is when the warmup saw no signal.
    has_ref = phi_ref > 0
    ratio = phi / jnp.where(has_ref, phi_ref, 1.0)
    moved = jnp.clip(ratio ** power, min_scale, max_scale)
    lr_scale = jnp.where(has_ref, moved, 1.0)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return state._replace(
        count=count,
        skipped=skipped,
        signal_ema=f32(signal_ema),
        sq_norm_ema=f32(sq_norm_ema),
        noise_to_signal=f32(jnp.where(ok, noise_to_signal, state.noise_to_signal)),
        signal_fraction_ref=f32(phi_ref),
        lr_scale=f32(jnp.where(ok, lr_scale, state.lr_scale)),
    )

  def update_fn(updates, state: GNSState, params=None, *, group_sq_norm=None,
                num_groups=None, **extra_args):
    if isinstance(updates, GroupedGrads):
      if group_sq_norm is not None or num_groups is not None:
        raise ValueError(
            "gns: the gradients are a GroupedGrads, which carries its own "
            "group_sq_norm and num_groups; do not pass them as well."
        )
      updates, group_sq_norm, num_groups = updates.grads, *updates.extra_args.values()
    if (group_sq_norm is None) != (num_groups is None):
      missing = "num_groups" if num_groups is None else "group_sq_norm"
      raise ValueError(
          f"gns: group_sq_norm and num_groups go together; {missing} is missing."
      )
    if group_sq_norm is None and axis_name is None:
      raise ValueError(
          "gns needs the gradients of N >= 2 groups of equal size. Pass "
          "update(g, state, params) with g = gradvar_optax.grouped_grad("
          "loss_fn, N)(params, *batch), or "
          "update(grads, state, params, group_sq_norm=q, num_groups=N), with "
          "grads the mean gradient over the groups and q the mean over the "
          "groups of each group's squared gradient norm, or build "
          "gns(base, axis_name=...) and hand it each replica's un-averaged "
          "gradients under pmap or shard_map."
      )
    if group_sq_norm is not None:
      _check_scalar(group_sq_norm)
    if num_groups is not None:
      _check_scalar(num_groups, "num_groups")
      n = _concrete(num_groups)
      if n is not None and not n >= 2:
        raise ValueError(
            f"gns: num_groups must be >= 2, got num_groups={num_groups!r} (a traced "
            "1 marks a step without groups; a constant one would never observe)."
        )
    if axis_name is None:
      mean = updates
    else:
      mean = jax.lax.pmean(updates, axis_name)
    inner_updates, inner_state = base_optimizer.update(
        mean, state.inner_state, params, **extra_args
    )
    # As in gradvar: the barrier keeps the norms' reductions out of the base
    # optimizer's elementwise loop, which XLA:CPU would otherwise fuse them into
    # (slower), and leaves the base update's code the plain optimizer's.
    inner_updates, updates, mean = jax.lax.optimization_barrier(
        (inner_updates, updates, mean)
    )
    sq_norm = _sq_norm(mean)
    if axis_name is None:
      q, n = group_sq_norm, num_groups
    else:
      replicas = jax.lax.psum(1, axis_name)
      if group_sq_norm is None:
        q, n = _sq_norm(updates), replicas
      else:
        q, n = group_sq_norm, jnp.asarray(num_groups, jnp.float32) * replicas
      q = jax.lax.pmean(jnp.asarray(q, jnp.float32), axis_name)
    state = observe(state, sq_norm, q, n)
    scale = state.lr_scale
    inner_updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), inner_updates)
    return inner_updates, state._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


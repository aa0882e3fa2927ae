# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Gradients of N equal groups of one batch, the input :func:`gns` needs on one device."""

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradvar_optax._numerics import sq_norm as _sq_norm


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GroupedGrads:
  """A mean gradient that carries its groups' statistics, for :func:`gns`.

  :func:`grouped_grad` returns it. Hand it to ``gns``'s ``update`` in place
  of the gradients (``opt.update(g, state, params)``, Linen's
  ``TrainState.apply_gradients(grads=g)``, ``optax.chain``,
  ``inject_hyperparams``): ``gns`` reads ``group_sq_norm`` and ``num_groups``
  from it and hands ``grads`` to its base optimizer, so no extra argument
  travels through the loop and the number of groups is stated once. Where a
  loop takes apart the gradient tree (``flax.nnx.Optimizer.update``), pass
  ``optimizer.update(model, g.grads, **g.extra_args)``.

  It is a pytree whose leaves are those of ``grads`` and ``group_sq_norm``;
  ``num_groups`` is static.

  Attributes:
    grads: the mean gradient over the groups, in the params' structure.
    group_sq_norm: float32 scalar, the mean over the groups of each group's
      squared gradient norm.
    num_groups: the number of groups, a Python int >= 2.
  """

  grads: Any
  group_sq_norm: jax.Array
  num_groups: int = dataclasses.field(metadata={"static": True})

  @property
  def extra_args(self) -> dict[str, Any]:
    """``{"group_sq_norm": ..., "num_groups": ...}``, ``update``'s keyword form."""
    return {"group_sq_norm": self.group_sq_norm, "num_groups": self.num_groups}

  def __contains__(self, key) -> bool:
    # Linen's TrainState.apply_gradients asks `"overwrite_with_gradient" in grads`.
    return isinstance(self.grads, dict) and key in self.grads


def _check_count(num_microbatches) -> int:
  if (isinstance(num_microbatches, bool)
      or not isinstance(num_microbatches, (int, np.integer)) or num_microbatches < 2):
    raise ValueError(
        f"num_microbatches must be a Python int >= 2, got {num_microbatches!r}."
    )
  return int(num_microbatches)


def _splitter(m: int, where: str):
  def split(path, x):
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[0] % m:
      raise ValueError(
          f"{where}: batch array {jax.tree_util.keystr(path)} has shape "
          f"{x.shape}; its leading size must be a multiple of "
          f"num_microbatches={m} (drop or pad a last partial batch)."
      )
    return x.reshape((m, x.shape[0] // m) + x.shape[1:])

  return lambda batch: jax.tree_util.tree_map_with_path(split, batch)




def grouped_grad(loss_fn, num_microbatches: int, *, has_aux: bool = False):
  r"""The gradient of a batch as equal microbatches, carrying what :func:`gns` reads.

  The returned function splits every array of the batch along its leading
  axis into ``num_microbatches`` equal microbatches and takes ``loss_fn``'s
  gradient on each, **one after the other** (a ``jax.lax.scan``, as gradient
  accumulation does: one microbatch's activations at a time, and one float32
  accumulator of the params' size). It returns a :class:`GroupedGrads`: the
  mean gradient, which is the whole batch's when ``loss_fn`` is a mean over
  its examples, with ``q`` and ``N``::

    g = grouped_grad(loss_fn, 4)(params, x, y)
    updates, state = opt.update(g, state, params)        # opt = gns(base)
    state = train_state.apply_gradients(grads=g)         # Linen

  With a keyword ``rng=key``, microbatch ``i`` calls ``loss_fn(params, *mb,
  rng=jax.random.fold_in(key, i))``: its own dropout key. Models with
  BatchNorm must normalise each microbatch over its own examples (the groups'
  gradients must be independent samples; see :func:`gns`).

  Args:
    loss_fn: ``loss_fn(params, *batch)`` returning a scalar loss (or ``(loss,
      aux)`` with ``has_aux``) for one microbatch.
    num_microbatches: the number of groups ``N``, a Python int >= 2; every
      batch array's leading size must be a multiple of it.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` comes back
      stacked over the microbatches.

  Returns:
    A function ``(params, *batch, rng=None)`` returning a
    :class:`GroupedGrads`, or ``(GroupedGrads, aux)`` with ``has_aux``.

  Raises:
    ValueError: if ``num_microbatches`` is not an int >= 2, or (when called)
      a batch array's leading size is not a multiple of it, naming its path.

  Example:
    >>> import jax.numpy as jnp, gradvar_optax
    >>> loss = lambda p, x: jnp.mean((x * p["w"]) ** 2) / 2
    >>> g = gradvar_optax.grouped_grad(loss, 2)({"w": jnp.ones(())},
    ...                                         jnp.array([1.0, 1.0, 2.0, 2.0]))
    >>> # The microbatches' gradients are 1 and 4: their mean and mean square.
    >>> float(g.grads["w"]), float(g.group_sq_norm), g.num_groups
    (2.5, 8.5, 2)
  """
  m = _check_count(num_microbatches)
  split = _splitter(m, "grouped_grad")
  grad = jax.grad(loss_fn, has_aux=has_aux)

  def grad_fn(params, *batch, rng: Optional[jax.Array] = None):
    micro = split(batch)

    def one(total, xs):
      i, mb = xs
      kwargs = {} if rng is None else {"rng": jax.random.fold_in(rng, i)}
      out = grad(params, *mb, **kwargs)
      grads, aux = out if has_aux else (out, None)
      total = jax.tree.map(lambda t, g: t + g.astype(jnp.float32), total, grads)
      return total, (_sq_norm(grads), aux)

    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
    total, (sq_norms, aux) = jax.lax.scan(one, zeros, (jnp.arange(m), micro))
    mean = jax.tree.map(lambda t, p: (t / m).astype(jnp.result_type(p)), total, params)
    out = GroupedGrads(mean, jnp.mean(sq_norms), m)
    return (out, aux) if has_aux else out

  return grad_fn


def microbatch_grad(
    loss_fn,
    num_microbatches: int,
    *,
    has_aux: bool = False,
    axis_name: Optional[str] = None,
):
  r"""Gradients of equal microbatches of one batch, under a ``vmap``.

  The keyword form of :func:`grouped_grad`, for collectives across the
  microbatches: it returns ``(grads, q)``, the mean gradient and :math:`q =
  \mathrm{mean}_i |g_i|^2`, to pass as ``opt.update(grads, state, params,
  group_sq_norm=q, num_groups=num_microbatches)``. The microbatches run under
  a ``jax.vmap`` named ``axis_name`` (``jax.lax.axis_index(axis_name)`` gives
  microbatch ``i``), which holds every microbatch's gradient at once
  (``num_microbatches`` times the params' size) and on XLA:CPU costs more than
  :func:`grouped_grad`'s sequence. Prefer :func:`grouped_grad` unless
  ``loss_fn`` needs the axis.

  **BatchNorm.** Leave the microbatch axis out of BatchNorm's ``axis_name``,
  so that each microbatch is normalised over its own examples, and average
  the new running statistics over the microbatches. Whole-batch statistics
  couple the microbatches' gradients, inflate ``q``, and the signal estimate
  can stay negative (cpu-v2's ResNet: ``gns`` never moved its scale).

  Args:
    loss_fn: ``loss_fn(params, *batch)`` returning a scalar loss (or
      ``(loss, aux)`` with ``has_aux``) for one microbatch.
    num_microbatches: the number of groups ``N``, a Python int >= 2.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` comes back
      stacked over the microbatches.
    axis_name: the name of the microbatch axis, for collectives in
      ``loss_fn``.

  Returns:
    A function ``(params, *batch)`` returning ``(grads, group_sq_norm)``, or
    ``((grads, group_sq_norm), aux)`` with ``has_aux``.

  Raises:
    ValueError: as :func:`grouped_grad`.

  Example:
    >>> import jax.numpy as jnp, gradvar_optax
    >>> loss = lambda p, x: jnp.mean((x * p["w"]) ** 2) / 2
    >>> grad_fn = gradvar_optax.microbatch_grad(loss, 2)
    >>> grads, q = grad_fn({"w": jnp.ones(())}, jnp.array([1.0, 1.0, 2.0, 2.0]))
    >>> float(grads["w"]), float(q)
    (2.5, 8.5)
  """
  m = _check_count(num_microbatches)
  split = _splitter(m, "microbatch_grad")
  grad = jax.grad(loss_fn, has_aux=has_aux)

  def grad_fn(params, *batch):
    micro = split(batch)
    out = jax.vmap(lambda b: grad(params, *b), axis_name=axis_name)(micro)
    grads, aux = out if has_aux else (out, None)
    leaves = jax.tree.leaves(grads)
    per_group = sum(
        jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(1, x.ndim)))
        for x in leaves
    ) if leaves else jnp.zeros([m], jnp.float32)
    q = jnp.mean(per_group).astype(jnp.float32)
    mean = jax.tree.map(
        lambda x: jnp.mean(x.astype(jnp.float32), axis=0).astype(x.dtype), grads
    )
    return ((mean, q), aux) if has_aux else (mean, q)

  return grad_fn

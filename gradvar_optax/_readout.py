# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading the LR scale, the variability and the noise out of any optimizer state."""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradvar_optax._gns import GNSState
from gradvar_optax._gradvar import GradVarState
from gradvar_optax._stationarity import StationarityState


def _unwrap(value: Any) -> Any:
  # flax.nnx.Optimizer wraps every state leaf in an nnx Variable.
  if hasattr(value, "get_value"):
    return value.get_value()
  return value


def _required(kind) -> frozenset[str]:
  # The fields that identify a state restored as a dict (orbax without a target, nnx.state):
  # all but the inner state; GNSState's ema_weight, dropped in 0.3, may be there too.
  return frozenset(kind._fields) - {"inner_state"}


def _find(tree: Any, kinds) -> list[tuple[Any, Any, type]]:
  """Every state of `kinds` in `tree`, as a NamedTuple or as a mapping of its fields."""
  found = []

  def visit(path, node):
    if isinstance(node, kinds):
      found.append((path, node, type(node)))
      return
    if isinstance(node, Mapping):
      keys = {k for k in node.keys() if isinstance(k, str)}
      kind = next((k for k in kinds if _required(k) <= keys), None)
      if kind is not None:
        found.append((path, node, kind))
        return
    children, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(children) == 1 and children[0][0] == () and children[0][1] is node:
      return  # a leaf
    for key, child in children:
      visit(path + key, child)

  visit((), tree)
  return found


def _field(opt_state: Any, name: str, kinds=(GradVarState,)) -> jax.Array:
  names = tuple(kind.__name__ for kind in kinds)
  found = _find(opt_state, kinds)
  found = [(path, node, kind) for path, node, kind in found if name in kind._fields]
  if not found:
    builders = {GradVarState: "gradvar_optax.gradvar or scale_by_gradvar",
                GNSState: "gradvar_optax.gns",
                StationarityState: "gradvar_optax.reduce_on_stationarity"}
    raise ValueError(
        f"No {' or '.join(names)} in this optimizer state, so no {name!r} to "
        f"read: expected an optimizer state (NamedTuples, or the dicts that orbax "
        f"restores without a target and nnx.state gives) holding one. Build the "
        f"optimizer with {' or '.join(builders[k] for k in kinds)}."
    )
  if len(found) > 1:
    paths = ", ".join(jax.tree_util.keystr(path) for path, _, _ in found)
    found_names = {kind.__name__ for _, _, kind in found}
    kind = f"{found_names.pop()}s" if len(found_names) == 1 else f"states with a {name!r}"
    raise ValueError(
        f"{len(found)} {kind} in this optimizer state ({paths}); read "
        "the one you want by passing that sub-state."
    )
  path, node, _ = found[0]
  value = _unwrap(node[name] if isinstance(node, Mapping) else getattr(node, name))
  if not hasattr(value, "shape") and not isinstance(value, (int, float, np.number)):
    raise ValueError(
        f"{jax.tree_util.keystr(path)}.{name} is a {type(value).__name__}; expected an "
        "array: pass the optimizer state itself."
    )
  # A state with leading axes (vmapped over runs, replicated by pmap) reads one value per
  # element, never silently its first.
  return jnp.asarray(value)


def lr_scale(opt_state: Any) -> jax.Array:
  """The current learning-rate scale held in ``opt_state``.

  It reads the :class:`GradVarState` of :func:`gradvar`, the
  :class:`GNSState` of :func:`gns` or the :class:`StationarityState` of
  :func:`reduce_on_stationarity`. Works on any nesting (``chain``,
  ``inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``, ...), inside
  and outside ``jit``, on ``flax.nnx.Optimizer``'s wrapped state, and on
  dict-shaped states (orbax restored without a target, ``nnx.state``). A
  state with leading axes (vmapped over runs, or replicated by ``pmap``) gives
  one value per element: ``lr_scale(state)[0]`` reads one pmap replica.

  Args:
    opt_state: an optimizer state that contains exactly one
      :class:`GradVarState`, :class:`GNSState` or :class:`StationarityState`.

  Returns:
    A float32 scalar (an array over a batched state's leading axes): the
    factor the base optimizer's step is multiplied by.

  Raises:
    ValueError: if the state holds none of them, or several.

  Example:
    >>> import jax.numpy as jnp, optax, gradvar_optax
    >>> opt = gradvar_optax.gradvar(optax.adam(1e-3))
    >>> float(gradvar_optax.lr_scale(opt.init({"w": jnp.ones(2)})))
    1.0
  """
  return _field(opt_state, "lr_scale", (GradVarState, GNSState, StationarityState))


def variability(opt_state: Any) -> jax.Array:
  """The gradient-norm variability of the latest decision in ``opt_state``.

  It is the coefficient of variation of the last full window of gradient
  norms (0 before the first decision). See :func:`lr_scale` for where it
  works.

  Args:
    opt_state: an optimizer state that contains exactly one
      :class:`GradVarState`.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the state holds no GradVarState, or several.
  """
  return _field(opt_state, "variability")


def noise_to_signal(opt_state: Any) -> jax.Array:
  """The smoothed noise-to-signal ratio ``r`` of :func:`gns`'s global batch.

  ``r = (S / N) / G^2`` from the moving averages (see :func:`gns`): it
  estimates ``B_simple / B``, the gradient noise scale over the global batch
  size. 0 before the first finite step. See :func:`lr_scale` for where it
  works.

  Args:
    opt_state: an optimizer state that contains exactly one :class:`GNSState`.

  Returns:
    A float32 scalar, >= 0.

  Raises:
    ValueError: if the state holds no GNSState, or several.
  """
  return _field(opt_state, "noise_to_signal", (GNSState,))


def noise_scale(opt_state: Any, batch_size: int) -> jax.Array:
  """The gradient noise scale ``B_simple`` in examples, the critical batch size.

  It is ``noise_to_signal(opt_state) * batch_size``: McCandlish et al.'s
  ``B_simple = tr(Sigma) / |G|^2``, where ``Sigma`` is the per-example gradient
  covariance. Batches much smaller than it waste little data per step; much
  larger ones waste compute.

  Args:
    opt_state: an optimizer state that contains exactly one :class:`GNSState`.
    batch_size: the global batch size, all the groups together, in examples.

  Returns:
    A float32 scalar.

  Raises:
    ValueError: if the state holds no GNSState, or several.

  Example:
    >>> import jax.numpy as jnp, optax, gradvar_optax
    >>> opt = gradvar_optax.gns(optax.adam(1e-3))
    >>> float(gradvar_optax.noise_scale(opt.init({"w": jnp.ones(2)}), 256))
    0.0
  """
  return noise_to_signal(opt_state) * jnp.float32(batch_size)

# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading the LR scale and the variability out of any optimizer state."""

from typing import Any

import jax
import optax

from gradvar_optax._gradvar import GradVarState


def _unwrap(value: Any) -> Any:
  # flax.nnx.Optimizer wraps every state leaf in an nnx Variable.
  if hasattr(value, "get_value"):
    return value.get_value()
  return value


def _field(opt_state: Any, name: str) -> jax.Array:
  found = optax.tree_utils.tree_get_all_with_path(
      opt_state,
      name,
      filtering=lambda path, _: path[-1].tuple_name == GradVarState.__name__,
  )
  if not found:
    raise ValueError(
        f"No GradVarState in this optimizer state, so no {name!r} to read. "
        "Build the optimizer with gradvar_optax.gradvar or scale_by_gradvar."
    )
  if len(found) > 1:
    paths = ", ".join(jax.tree_util.keystr(path) for path, _ in found)
    raise ValueError(
        f"{len(found)} GradVarStates in this optimizer state ({paths}); read "
        "the one you want by passing that sub-state."
    )
  value = _unwrap(found[0][1])
  # A state replicated by pmap has a leading device axis; every replica holds
  # the same value.
  return value[0] if getattr(value, "ndim", 0) == 1 else value


def lr_scale(opt_state: Any) -> jax.Array:
  """The current learning-rate scale held in ``opt_state``.

  Works on any nesting (``chain``, ``inject_hyperparams``, ``MultiSteps``,
  ``apply_if_finite``, ...), on states replicated over a leading device axis,
  inside and outside ``jit``, and on ``flax.nnx.Optimizer``'s wrapped state.

  Args:
    opt_state: an optimizer state that contains exactly one
      :class:`GradVarState`.

  Returns:
    A float32 scalar: the factor the base optimizer's step is multiplied by.

  Raises:
    ValueError: if the state holds no GradVarState, or several.

  Example:
    >>> import jax.numpy as jnp, optax, gradvar_optax
    >>> opt = gradvar_optax.gradvar(optax.adam(1e-3))
    >>> float(gradvar_optax.lr_scale(opt.init({"w": jnp.ones(2)})))
    1.0
  """
  return _field(opt_state, "lr_scale")


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

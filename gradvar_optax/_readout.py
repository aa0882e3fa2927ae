# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading the LR scale, the variability and the noise out of any optimizer state."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradvar_optax._gns import GNSState
from gradvar_optax._gradvar import GradVarState
from gradvar_optax._stationarity import StationarityState


def _unwrap(value: Any) -> Any:
  # flax.nnx.Optimizer wraps every state leaf in an nnx Variable.
  if hasattr(value, "get_value"):
    return value.get_value()
  return value


def _field(opt_state: Any, name: str, kinds=(GradVarState,)) -> jax.Array:
  names = tuple(kind.__name__ for kind in kinds)
  found = optax.tree_utils.tree_get_all_with_path(
      opt_state,
      name,
      filtering=lambda path, _: path[-1].tuple_name in names,
  )
  if not found:
    builders = {GradVarState: "gradvar_optax.gradvar or scale_by_gradvar",
                GNSState: "gradvar_optax.gns",
                StationarityState: "gradvar_optax.reduce_on_stationarity"}
    raise ValueError(
        f"No {' or '.join(names)} in this optimizer state, so no {name!r} to "
        f"read. Build the optimizer with {' or '.join(builders[k] for k in kinds)}."
    )
  if len(found) > 1:
    paths = ", ".join(jax.tree_util.keystr(path) for path, _ in found)
    found_names = {path[-1].tuple_name for path, _ in found}
    kind = f"{found_names.pop()}s" if len(found_names) == 1 else f"states with a {name!r}"
    raise ValueError(
        f"{len(found)} {kind} in this optimizer state ({paths}); read "
        "the one you want by passing that sub-state."
    )
  value = _unwrap(found[0][1])
  # A state replicated by pmap has a leading device axis; every replica holds
  # the same value.
  return value[0] if getattr(value, "ndim", 0) == 1 else value


def lr_scale(opt_state: Any) -> jax.Array:
  """The current learning-rate scale held in ``opt_state``.

  It reads the :class:`GradVarState` of :func:`gradvar`, the
  :class:`GNSState` of :func:`gns` or the :class:`StationarityState` of
  :func:`reduce_on_stationarity`. Works on any nesting (``chain``,
  ``inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``, ...), on states
  replicated over a leading device axis, inside and outside ``jit``, and on
  ``flax.nnx.Optimizer``'s wrapped state.

  Args:
    opt_state: an optimizer state that contains exactly one
      :class:`GradVarState`, :class:`GNSState` or :class:`StationarityState`.

  Returns:
    A float32 scalar: the factor the base optimizer's step is multiplied by.

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

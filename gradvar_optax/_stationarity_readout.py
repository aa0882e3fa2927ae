# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""Reading the drops and the latest test of :func:`reduce_on_stationarity` out of any state."""

from typing import Any, NamedTuple

import jax

from gradvar_optax._readout import _field
from gradvar_optax._stationarity import StationarityState


class StationarityTest(NamedTuple):
  """The latest test of :func:`reduce_on_stationarity` (all 0 before the first).

  Attributes:
    step: int32 finite step at which it ran.
    mean: float32 mean of the bucket's samples.
    lower: float32 lower end of the t interval.
    upper: float32 upper end of the t interval.
  """

  step: jax.Array
  mean: jax.Array
  lower: jax.Array
  upper: jax.Array


def stationarity_drops(opt_state: Any) -> jax.Array:
  """The number of drops :func:`reduce_on_stationarity` has made.

  ``lr_scale`` is ``float32(factor)`` multiplied this many times (with the
  default ``min_scale``). See :func:`lr_scale` for where it works.

  Args:
    opt_state: an optimizer state that contains exactly one
      :class:`StationarityState`.

  Returns:
    An int32 scalar.

  Raises:
    ValueError: if the state holds no StationarityState, or several.

  Example:
    >>> import jax.numpy as jnp, optax, gradvar_optax
    >>> opt = optax.chain(optax.clip_by_global_norm(1.0),
    ...                   gradvar_optax.reduce_on_stationarity(optax.adam(1e-3)))
    >>> int(gradvar_optax.stationarity_drops(opt.init({"w": jnp.ones(2)})))
    0
  """
  return _field(opt_state, "drops", (StationarityState,))


def stationarity_test(opt_state: Any) -> StationarityTest:
  """The latest stationarity test of :func:`reduce_on_stationarity`.

  A test that passed (a drop) has an interval that contains 0. See
  :func:`lr_scale` for where it works.

  Args:
    opt_state: an optimizer state that contains exactly one
      :class:`StationarityState`.

  Returns:
    A :class:`StationarityTest` of scalars: its step, the mean and the
    interval.

  Raises:
    ValueError: if the state holds no StationarityState, or several.

  Example:
    >>> import jax.numpy as jnp, optax, gradvar_optax
    >>> opt = gradvar_optax.reduce_on_stationarity(optax.adam(1e-3))
    >>> test = gradvar_optax.stationarity_test(opt.init({"w": jnp.ones(2)}))
    >>> int(test.step), float(test.lower), float(test.upper)  # no test yet
    (0, 0.0, 0.0)
  """
  read = lambda name: _field(opt_state, name, (StationarityState,))
  return StationarityTest(read("test_step"), read("test_mean"), read("test_lower"),
                          read("test_upper"))

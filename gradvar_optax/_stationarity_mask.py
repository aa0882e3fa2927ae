# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The ``mask`` of :func:`reduce_on_stationarity`: which params its statistic reads."""

from collections.abc import Callable
from typing import Any, Union

import jax
import numpy as np

MaskOrFn = Union[Any, Callable[[Any], Any]]


def check_mask_leaves(mask, where: str) -> None:
  leaves = jax.tree.leaves(mask)
  bad = [v for v in leaves if not isinstance(v, (bool, np.bool_))]
  if bad:
    raise ValueError(
        f"mask{where} must be a pytree of Python bools (True: the test reads that param), got "
        f"a leaf {bad[0]!r} of type {type(bad[0]).__name__}."
    )
  if not any(leaves):
    raise ValueError(f"mask{where} selects no params: at least one leaf must be True.")


def resolve_mask(mask: MaskOrFn, params):
  """The mask as a pytree of bools for these params; ValueErrors name `mask`."""
  if mask is None:
    return None
  tree = mask(params) if callable(mask) else mask
  check_mask_leaves(tree, "(params)" if callable(mask) else "")
  try:
    jax.tree.map(lambda m, sub: None, tree, params)
  except ValueError as e:
    raise ValueError(
        f"mask must have the params' tree structure (or a prefix of it): {e}"
    ) from None
  return tree

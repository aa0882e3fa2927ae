# Copyright 2026 The gradvar-optax Authors.
# SPDX-License-Identifier: Apache-2.0
"""The float32 norms that the transformations, and the suite's step and controls, share.

Private: one definition, so that a norm measured in one place (the train step's group norms)
and in another (a transformation's) is the same computation, bit for bit.
"""

import jax
import jax.numpy as jnp


def sq_norm(tree) -> jax.Array:
  """The squared L2 norm of all leaves, accumulated in float32 whatever their dtype."""
  return sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)),
             jnp.zeros([], jnp.float32))


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves, accumulated in float32 whatever their dtype."""
  if not jax.tree.leaves(tree):
    return jnp.zeros([], jnp.float32)
  return jnp.sqrt(sq_norm(tree))

"""One per-device train step and eval step, and the two launchers that run them: pmap and shard_map.

The step functions are written for one device holding its share of the global batch, with the
collectives named by `AXIS`. `jax.pmap` runs them with a leading device axis; `jax.shard_map` over
a one-axis mesh runs the very same functions on global arrays. shard_map runs with
`check_vma=False`, which gives the function pmap's meaning: with the check on, shard_map would
itself sum the gradient of the replicated params over the axis, and the explicit `pmean` would then
average a sum.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import gradvar_optax

AXIS = "batch"


class TrainState(NamedTuple):
  step: jax.Array  # int32: optimizer updates taken
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any


def _variables(params, batch_stats):
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _weights(batch, logits):
  return batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(logits.shape[:1])


def _scale_metric(read: Callable[[Any], jax.Array], opt_state) -> jax.Array:
  """A gradvar reading, or NaN (null in the records) for strategies without gradvar."""
  try:
    return read(opt_state).astype(jnp.float32)
  except ValueError:
    return jnp.full((), jnp.nan, jnp.float32)


def make_train_step(model, input_names, optimizer, effective_lr) -> Callable:
  """The per-device step: `(state, batch, rng) -> (state, metrics)`, metrics averaged over AXIS."""

  def train_step(state: TrainState, batch, rng):
    # Replicas differ in dropout exactly as the device index says, under both launchers.
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    inputs = {k: batch[k] for k in input_names}

    def loss_fn(params):
      out = model.apply(_variables(params, state.batch_stats), **inputs, train=True,
                        rngs={"dropout": rng},
                        mutable=["batch_stats"] if state.batch_stats else False)
      logits, new_vars = out if state.batch_stats else (out, {})
      losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
      weights = _weights(batch, logits)
      loss = jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)
      return loss, (logits, new_vars.get("batch_stats", state.batch_stats), weights)

    (loss, (logits, batch_stats, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = jax.lax.pmean(grads, AXIS)
    loss = jax.lax.pmean(loss, AXIS)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weights)
    accuracy = jax.lax.psum(correct, AXIS) / jnp.maximum(jax.lax.psum(jnp.sum(weights), AXIS), 1)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": optax.tree.norm(grads),
        "lr_scale": _scale_metric(gradvar_optax.lr_scale, opt_state),
        "variability": _scale_metric(gradvar_optax.variability, opt_state),
        "effective_lr": jnp.asarray(effective_lr(opt_state, state.step), jnp.float32),
    }
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  return train_step


def make_eval_step(model, input_names) -> Callable:
  """The per-device eval step: `(state, batch) -> sums` of loss, correct and count over AXIS."""

  def eval_step(state: TrainState, batch):
    inputs = {k: batch[k] for k in input_names}
    logits = model.apply(_variables(state.params, state.batch_stats), **inputs, train=False)
    weights = _weights(batch, logits)
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    sums = {
        "loss": jnp.sum(losses * weights),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weights),
        "count": jnp.sum(weights),
    }
    return jax.lax.psum(sums, AXIS)

  return eval_step


class Launcher:
  """Runs the per-device functions on `devices`, under pmap or shard_map, and places the state."""

  def __init__(self, parallel: str, devices):
    self.parallel = parallel
    self.devices = list(devices)
    self.mesh = Mesh(np.array(self.devices), (AXIS,))

  def train(self, train_step):
    if self.parallel == "pmap":
      return jax.pmap(train_step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,),
                      devices=self.devices)
    return jax.jit(jax.shard_map(train_step, mesh=self.mesh, in_specs=(P(), P(AXIS), P()),
                                 out_specs=(P(), P()), check_vma=False), donate_argnums=(0,))

  def eval(self, eval_step):
    if self.parallel == "pmap":
      return jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
    return jax.jit(jax.shard_map(eval_step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                 out_specs=P(), check_vma=False))

  def placement(self) -> Callable:
    """`batch -> batch` on the devices, in the layout this launcher's step takes."""
    from train.data import placement  # pylint: disable=g-import-not-at-top
    if self.parallel == "pmap":
      return placement.pmap_placement(self.devices)
    return placement.mesh_placement(self.mesh, AXIS)

  def put_state(self, state):
    """A host (or single-device) state, replicated as the launcher wants it."""
    if self.parallel == "pmap":
      # The leading axis split over the devices: the layout pmap gives its own inputs.
      n = len(self.devices)
      sharding = NamedSharding(self.mesh, P(AXIS))
      return jax.tree.map(
          lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + jnp.shape(x)), sharding), state)
    return jax.device_put(state, NamedSharding(self.mesh, P()))

  def get(self, tree):
    """One replica of a replicated value, as NumPy on the host."""
    if self.parallel == "pmap":
      return jax.tree.map(lambda x: np.asarray(x[0]), tree)
    return jax.device_get(tree)

"""One per-device train step and eval step, and the two launchers that run them: pmap and shard_map.

The step functions are written for one device holding its share of the global batch, with the
collectives named by `AXIS`. `jax.pmap` runs them with a leading device axis; `jax.shard_map` over
a one-axis mesh runs the very same functions on global arrays. shard_map runs with
`check_vma=False`, which gives the function pmap's meaning: with the check on, shard_map would
itself sum the gradient of the replicated params over the axis, and the explicit `pmean` would then
average a sum.
"""

import collections
from collections.abc import Callable, Mapping, Sequence
import functools
from typing import Any, NamedTuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from gradvar_optax import _numerics
from train import groups

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


def model_axis_name(grouped: bool) -> str | None:
  """The axis the model's batch-wide computations (BatchNorm) reduce over in training.

  The plain step normalises over the device axis: the whole global batch. A grouped step
  (`make_train_step(microbatches=...)`) gives each group, one microbatch of one device, its own
  statistics (None), as per-replica BatchNorm does in data-parallel training: the groups'
  gradients are then independent samples, which gns's estimator assumes. Whole-batch statistics
  couple them, so that their mean is right but their squared norms are inflated (`gns`'s noise
  estimate then stayed negative on cpu-v2's ResNet). `models.DataFacts.axis_name` takes this.
  """
  return None if grouped else AXIS


# The float32 squared norm that the library measures with (`gradvar_optax._numerics`).
_sq_norm = _numerics.sq_norm


# The extra arguments of an optimizer's update that the step can give (`make_train_step`).
UPDATE_ARGS = ("group_sq_norm", "num_groups")


def make_train_step(model, input_names, optimizer, effective_lr,
                    microbatches: int | None = None, group_grads: bool = True,
                    readouts: Mapping[str, Callable[[Any], jax.Array]] | None = None,
                    update_args: Sequence[str] = (), group_every: int = 1) -> Callable:
  """The per-device step: `(state, batch, rng) -> (state, metrics)`, metrics averaged over AXIS.

  The metrics are the loss, accuracy, gradient norm and effective LR, and each of `readouts`
  (name -> a reading of the new optimizer state, a strategy's declared readouts). The update
  gets ``value=`` (the loss) and those of `UPDATE_ARGS` that `update_args` names: the gradient's
  groups (`group_sq_norm`, the mean over the groups of each one's squared gradient norm, and
  `num_groups`), which `gns` reads. The groups are the replicas, one per device, unless
  `microbatches` is set: then each device's batch is split into that many equal microbatches,
  each its own forward and backward pass, one after the other (train/groups.py), so that there
  are devices x microbatches groups. The model must then be built with `model_axis_name(True)`:
  BatchNorm normalises each group over its own examples, and its running averages are the mean
  over all groups (as the Flax ImageNet example averages per-replica statistics; the running
  variance is then the groups' mean variance, which leaves out the spread of their means: about
  (b-1)/b of the whole batch's for groups of b). Microbatch i on device r draws its dropout key
  as replica r*m + i would with one microbatch per device, so the step does not depend on how
  the groups are laid out over the devices. The loss and accuracy are the whole batch's either
  way.

  With `group_grads` (gns), the step takes each microbatch's gradient, and their mean is the
  update's gradient, accumulated in one float32 buffer of the params' size. Without it (gns's
  controls), the same computation and the same mean gradient, without the groups' norms (one
  group per device). On a model without BatchNorm that computation differs from the
  plain step's only in the dropout keys, so the loop gives such a control the plain step.

  With `group_every` k > 1 the groups are computed on the steps whose count is a multiple of k
  only (from the first); the other steps are the plain step's computation (BatchNorm over each
  device's batch, one group per device), and the update gets `num_groups` 1 there, which `gns`
  reads as a step without groups: its averages and scale hold. The steps' kind is chosen in the
  compiled step (`lax.cond` on the step count), so the loop runs one function either way.
  """
  if isinstance(group_every, bool) or not isinstance(group_every, int) or group_every < 1:
    raise ValueError(f"group_every must be an int >= 1, got {group_every!r}")
  unknown = sorted(set(update_args) - set(UPDATE_ARGS))
  if unknown:
    raise ValueError(f"update_args: the step gives an update only {', '.join(UPDATE_ARGS)}; "
                     f"got {', '.join(unknown)}")
  readouts = dict(readouts or {})

  def apply(params, batch_stats, batch, rng):
    """One device's batch or one microbatch: its loss, summed and counted, and the model's out."""
    inputs = {k: batch[k] for k in input_names}
    out = model.apply(_variables(params, batch_stats), **inputs, train=True,
                      rngs={"dropout": rng},
                      mutable=["batch_stats"] if batch_stats else False)
    logits, new_vars = out if batch_stats else (out, {})
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    weights = _weights(batch, logits)
    loss_sum = jnp.sum(losses * weights)
    loss = loss_sum / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (logits, new_vars.get("batch_stats", batch_stats), weights, loss_sum)

  def device_grads(state: TrainState, batch, rng):
    """The plain step's: one group per device, its gradient and its loss."""
    # Replicas differ in dropout exactly as the device index says, under both launchers.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
    (loss, (logits, batch_stats, weights, _)), grads = jax.value_and_grad(
        apply, has_aux=True)(state.params, state.batch_stats, batch, rng)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * weights)
    return grads, _sq_norm(grads), 1, loss, correct, jnp.sum(weights), batch_stats

  def microbatch_grads(state: TrainState, batch, rng):
    """`microbatches` groups per device, in sequence: the mean gradient, q, the whole loss."""
    return groups.microbatch_grads(
        apply, state.params, state.batch_stats, batch, rng, microbatches=microbatches,
        keys=("label", "mask", *input_names), group_grads=group_grads, axis_name=AXIS)

  def sometimes_grouped(state: TrainState, batch, rng):
    """The groups on every `group_every`-th step, the plain step's gradient on the others."""
    def plain(state, batch, rng):
      out = device_grads(state, batch, rng)
      # One group in all, not one per device (see train_step): gns holds on this step.
      return out[:2] + (jnp.zeros((), jnp.int32),) + out[3:]

    def grouped(state, batch, rng):
      out = microbatch_grads(state, batch, rng)
      return out[:2] + (jnp.asarray(out[2], jnp.int32),) + out[3:]

    return jax.lax.cond(state.step % group_every == 0, grouped, plain, state, batch, rng)

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if microbatches is None:
      grads_fn = device_grads
    else:
      grads_fn = microbatch_grads if group_every == 1 else sometimes_grouped
    grads, sq_norm, per_device, loss, correct, count, batch_stats = grads_fn(state, batch, rng)
    # Each group's squared norm is taken here, before the mean over the devices leaves only ḡ.
    group_sq_norm = jax.lax.pmean(sq_norm, AXIS)
    num_groups = jax.lax.axis_size(AXIS) * per_device
    if grads_fn is sometimes_grouped:  # 0 groups a device: a step without groups, 1 in all
      num_groups = jnp.maximum(num_groups, 1)
    grads = jax.lax.pmean(grads, AXIS)
    loss = jax.lax.pmean(loss, AXIS)
    accuracy = jax.lax.psum(correct, AXIS) / jnp.maximum(jax.lax.psum(count, AXIS), 1)
    extra = {"group_sq_norm": group_sq_norm, "num_groups": num_groups}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=loss,
                                          **{k: extra[k] for k in update_args})
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": optax.tree.norm(grads),
        **{name: jnp.asarray(read(opt_state), jnp.float32) for name, read in readouts.items()},
        "effective_lr": jnp.asarray(effective_lr(state.opt_state, opt_state, state.step),
                                    jnp.float32),
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
  """Runs the per-device functions under pmap or shard_map on `devices`, and places the state.

  `devices` are the run's devices on every process (a multi-host run lists all of them, as
  `jax.devices()` does); they are put in process order, the order in which the pipeline hands out
  the row blocks of a global batch, so one process and several give the same step. Each process
  feeds its own devices' rows and reads its own replicas:

  - pmap: each process passes arrays with a leading axis over its local devices (pmap's
    multi-process convention) and gets its local replicas back.
  - shard_map: global `jax.Array`s over a mesh of all devices; the state is replicated (`P()`).
  """

  def __init__(self, parallel: str, devices):
    self.parallel = parallel
    self.devices = sorted(devices, key=lambda d: d.process_index)  # stable: keeps local order
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    per_process = collections.Counter(d.process_index for d in self.devices)
    if not self.local_devices or len(set(per_process.values())) != 1:
      raise ValueError(f"devices: every process must take part with as many devices as the "
                       f"others; got {dict(per_process)} devices per process index, and "
                       f"process {jax.process_index()} runs this")
    self.multiprocess = len(per_process) > 1
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._local_mesh = Mesh(np.array(self.local_devices), (AXIS,))
    # (in_specs, out_specs) of each pmapped function, for `compile` on several processes.
    self._pmap_specs: dict[Callable, tuple[Any, Any]] = {}

  def train(self, train_step):
    if self.parallel == "pmap":
      fn = jax.pmap(train_step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,),
                    devices=self.devices)
      self._pmap_specs[fn] = ((P(AXIS), P(AXIS), P()), (P(AXIS), P(AXIS)))
      return fn
    return jax.jit(jax.shard_map(train_step, mesh=self.mesh, in_specs=(P(), P(AXIS), P()),
                                 out_specs=(P(), P()), check_vma=False), donate_argnums=(0,))

  def eval(self, eval_step):
    if self.parallel == "pmap":
      return jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
    return jax.jit(jax.shard_map(eval_step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                 out_specs=P(), check_vma=False))

  def compile(self, fn, *args) -> Callable:
    """`fn` (from `train`) compiled ahead of time for `args`; called like `fn`.

    On several processes, jax.pmap's compiled form takes and returns global arrays, not the
    per-process ones that pmap itself takes; the conversion (no copy) is added here.
    """
    compiled = fn.lower(*args).compile()
    if self.parallel != "pmap" or not self.multiprocess:
      return compiled
    in_specs, out_specs = self._pmap_specs[fn]

    def run(*local_args):
      global_args = multihost_utils.host_local_array_to_global_array(
          local_args, self.mesh, in_specs)
      return multihost_utils.global_array_to_host_local_array(
          compiled(*global_args), self.mesh, out_specs)

    return run

  def placement(self) -> Callable:
    """`batch -> batch` on the devices, in the layout this launcher's step takes."""
    from train.data import placement
    if self.parallel == "pmap":
      return placement.pmap_placement(self.local_devices)
    return placement.mesh_placement(self.mesh, AXIS)

  def put_state(self, state):
    """A host (or single-device) state, replicated as the launcher wants it.

    Every process must pass the same values (the same init from the same seed, or the same
    checkpoint): each one fills only its own devices' replicas from them.
    """
    if self.parallel == "pmap":
      # The leading axis split over the local devices: the layout pmap gives its own inputs.
      return jax.tree.map(functools.partial(
          _replicate, sharding=NamedSharding(self._local_mesh, P(AXIS)),
          copies=len(self.local_devices)), state)
    return jax.tree.map(functools.partial(
        _replicate, sharding=NamedSharding(self.mesh, P()), copies=None), state)

  def get(self, tree):
    """One replica of a replicated value, as NumPy on the host (this process's first device).

    Works when the value spans devices of other processes too: every replica is the same, and
    the first local one is read without any communication.
    """
    def replica(x):
      if not isinstance(x, jax.Array):
        return np.asarray(x)
      value = np.asarray(x.addressable_data(0))
      return value[0] if self.parallel == "pmap" else value  # pmap: [1, ...] per device

    return jax.tree.map(replica, tree)


def _replicate(x, *, sharding: NamedSharding, copies: int | None) -> jax.Array:
  """`x` on every device of `sharding`, from this process's copy (a leading axis of `copies`)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = _replicate(jax.random.key_data(x), sharding=sharding, copies=copies)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  host = np.asarray(x)
  if copies is not None:
    host = np.broadcast_to(host, (copies,) + host.shape)
  # Each process builds only its addressable shards, which a device_put of a global sharding
  # could not do from one process's value.
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

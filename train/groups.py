"""The grouped step's gradients: one device's batch as `m` microbatches, one after the other.

gns's estimator needs the gradients of N >= 2 groups; on one device the groups are equal
microbatches of the batch. They are computed as gradient accumulation computes them, in a
`lax.scan` over the microbatches: one microbatch's forward and backward pass at a time, and a
float32 accumulator of the gradients, the only gradient-sized buffer beyond the plain step's. A
`vmap` over the microbatches (the suite's path until issue 29) held every microbatch's gradient
at once and cost 1.7-2.7x the plain step on XLA:CPU, where a vmapped conv or LSTM scan runs
slower than the same work in sequence.

Every microbatch starts from the step's incoming BatchNorm statistics and normalises over its
own examples (the model is built with `step.model_axis_name(True)`); the step keeps the mean of
the groups' new running statistics, not a chain of them. Microbatch i on device r draws the
dropout key `fold_in(rng, r*m + i)`, the key replica r*m+i draws with one microbatch per device.
The mean gradient and q = mean_i |g_i|^2 equal the vmap's up to float32 summation order.

The loop's form follows what XLA:CPU does with it (`python -m benchmarks.perf.step_cost --suite
cpu-v2 --strategies fixed gns`, quiet cores, benchmarks/results/step_cost_sequential.json): a
model with BatchNorm (the ResNet's convolutions) inside the scan's while loop cost 12.3x the
plain step, and 1.02x with the loop unrolled; the LSTM cost 1.17x in the loop and 1.87x
unrolled. So a model that keeps BatchNorm state gets the unrolled loop (straight-line code, the
same order of work), the others the scan.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradvar_optax._numerics import sq_norm as _sq_norm


def microbatch_grads(apply: Callable, params: Any, batch_stats: Any, batch: dict, rng: jax.Array,
                     *, microbatches: int, keys: tuple[str, ...], group_grads: bool,
                     axis_name: str):
  """One device's `microbatches` groups, computed in sequence.

  Args:
    apply: `apply(params, batch_stats, microbatch, rng) -> (loss, (logits, new_batch_stats,
      weights, loss_sum))`, the loss of one microbatch (a weighted mean over its examples).
    params, batch_stats: the step's incoming variables; every microbatch starts from them.
    batch: this device's batch; the arrays named in `keys` are split along their leading axis.
    rng: the step's key; microbatch i on device r folds in r * microbatches + i.
    microbatches: m, the number of groups on this device.
    keys: the batch's arrays that the model and the loss read ("label", "mask", the inputs).
    group_grads: gns: the groups' squared norms are its q, and there are m groups. Without it
      (gns's controls), the same computation and mean gradient, reported as one group whose
      squared norm is the mean gradient's.
    axis_name: the device axis, over which the running statistics are averaged.

  Returns:
    `(grads, sq_norm, groups, loss, correct, count, batch_stats)`: the mean gradient over the
    microbatches (in the params' dtypes), q (or |mean|^2), the groups on this device, the
    device batch's weighted mean loss, its correct and weighted counts, and the mean of all the
    groups' new running statistics over every device.
  """
  m = microbatches
  micro = {k: batch[k].reshape((m, batch[k].shape[0] // m) + batch[k].shape[1:])
           for k in keys if k in batch}
  first = jax.lax.axis_index(axis_name) * m
  grad_fn = jax.value_and_grad(apply, has_aux=True)

  def one(carry, xs):
    grads_sum, stats_sum = carry
    i, mb = xs
    (_, (logits, new_stats, weights, loss_sum)), grads = grad_fn(
        params, batch_stats, mb, jax.random.fold_in(rng, first + i))
    correct = jnp.sum((jnp.argmax(logits, -1) == mb["label"]) * weights)
    grads_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_sum, grads)
    stats_sum = jax.tree.map(lambda a, s: a + s.astype(jnp.float32), stats_sum, new_stats)
    return (grads_sum, stats_sum), (_sq_norm(grads), loss_sum, jnp.sum(weights), correct)

  zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)
  (grads_sum, stats_sum), (sq_norms, loss_sums, counts, correct) = jax.lax.scan(
      one, (zeros(params), zeros(batch_stats)), (jnp.arange(m), micro),
      unroll=bool(jax.tree.leaves(batch_stats)))
  grads = jax.tree.map(lambda s, p: (s / m).astype(p.dtype), grads_sum, params)
  new_stats = jax.tree.map(lambda s, x: (s / m).astype(x.dtype), stats_sum, batch_stats)
  if group_grads:
    sq_norm, groups = jnp.mean(sq_norms), m
  else:
    sq_norm, groups = _sq_norm(grads), 1
  count = jnp.sum(counts)
  loss = jnp.sum(loss_sums) / jnp.maximum(count, 1.0)
  # The groups' running averages, then their mean over the groups of every device.
  new_stats = jax.lax.pmean(new_stats, axis_name)
  return grads, sq_norm, groups, loss, jnp.sum(correct), count, new_stats

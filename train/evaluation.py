"""Evaluation: a split's loss and accuracy, at the params a strategy evaluates (`eval_view`).

`train.loop` builds these for a run (`s`, its `train.loop.Setup`).
"""

from collections.abc import Callable
import itertools

import jax
import jax.numpy as jnp

from train import epoch as epoch_lib
from train import step as step_lib

# Evaluating at a strategy's `eval_params`, BatchNorm's statistics are recomputed from this many
# evaluation batches of the training split (see `eval_view`).
BN_BATCHES = 4


def evaluate(s, p_eval, state, split: str, place) -> dict[str, float]:
  totals = None
  with s.pipeline.eval_iterator(split, place=place) as it:
    for batch in it:
      sums = p_eval(state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = s.launcher.get(totals)
  count = float(totals["count"])
  return {f"{split}_loss": float(totals["loss"]) / count,
          f"{split}_accuracy": float(totals["correct"]) / count, f"{split}_examples": int(count)}


def make_batch_stats_step(model, input_names) -> Callable:
  """The per-device step `(state, batch) -> batch_stats`: BatchNorm's statistics of one batch at
  `state.params`, averaged over AXIS.

  The model runs in training mode, which normalises with the batch's own statistics and never
  reads the running averages, so Flax's update `new = momentum * old + (1 - momentum) * batch` is
  affine in `old`: one forward pass from `old = 0` with the tangent `old = 1` (`jax.jvp`) gives
  `(1 - momentum) * batch` and `momentum`, hence the batch's statistics, whatever the momentum of
  each layer. Dropout, if the model has any, uses a fixed key.
  """

  def batch_stats_step(state, batch):
    inputs = {k: batch[k] for k in input_names}

    def updated(old):
      _, new = model.apply({"params": state.params, "batch_stats": old}, **inputs, train=True,
                           rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
      return new["batch_stats"]

    zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
    ones = jax.tree.map(jnp.ones_like, state.batch_stats)
    scaled, momentum = jax.jvp(updated, (zeros,), (ones,))
    # A model whose BatchNorm is synced over AXIS has equal replicas already; one that is not
    # gets the mean over the devices.
    return jax.lax.pmean(jax.tree.map(lambda x, m: x / (1 - m), scaled, momentum),
                         step_lib.AXIS)

  return batch_stats_step


def eval_view(s, place) -> Callable:
  """`state -> state` to evaluate and to save as final: the strategy's `eval_params`.

  Without `eval_params` the state itself. With it, the params are `eval_params(opt_state,
  params)` (schedule-free's averaged iterate), on every replica (`epoch.on_replicas`). The running
  BatchNorm averages of the state belong to the params that trained, not to these, so a model
  with BatchNorm gets its statistics recomputed at the eval params: the mean over the first
  `BN_BATCHES` evaluation batches of the training split (in order, augmentation off; a split
  smaller than that gives fewer, the last padded with its first example) of each batch's
  statistics (`make_batch_stats_step`). They come from an evaluation iterator of their own, so
  the training iterator's state, and so the training batches, are untouched, and every
  evaluation uses the same examples. The cost, at each evaluation (validation and the final
  test), is `BN_BATCHES` forward passes in training mode over `eval_batch_size` examples each:
  at the default of 8 x the training batch, the forward passes of 32 training batches, about
  the compute of 10 training steps (a step's backward pass costs about two forward ones).
  """
  if s.strategy.eval_params is None:
    return lambda state: state
  eval_params = s.strategy.eval_params
  # The strategy's hook sees its own optimizer's state, inside `apply_if_finite`'s.
  params_of = epoch_lib.on_replicas(
      s.launcher, lambda opt_state, params: eval_params(opt_state.inner_state, params))
  stats_step = s.launcher.eval(make_batch_stats_step(s.model, s.model_spec.input_names))

  def view(state):
    state = state._replace(params=params_of(state.opt_state, state.params))
    if not state.batch_stats:
      return state
    total, n = None, 0
    with s.pipeline.eval_iterator("train", place=place) as it:
      for batch in itertools.islice(it, BN_BATCHES):
        stats = stats_step(state, batch)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    return state._replace(batch_stats=jax.tree.map(lambda x: x / n, total))

  return view

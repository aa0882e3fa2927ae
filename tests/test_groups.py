"""train/groups.py: the grouped step's microbatches in sequence give what the vmap over them gave.

The reference below is the suite's grouped path before issue 29 (a vmap over the microbatches),
kept inline: the sequential path must give its mean gradient, q, loss, counts and running
statistics up to float32 summation order, on BatchNorm models (a small conv net; ResNet, slow)
and dropout models (a small LSTM; the suite's LSTM with attention, slow), with a device axis of
2 emulated by a named vmap.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from train import groups
from train import step as step_lib

AXIS = step_lib.AXIS
MICRO = "microbatch"
DEVICES, M, PER_DEVICE = 2, 2, 8


def _apply_fn(model, input_names, has_stats):
  """The step's loss of one batch (train/step.py's `apply`)."""

  def apply(params, batch_stats, batch, rng):
    variables = {"params": params, **({"batch_stats": batch_stats} if has_stats else {})}
    out = model.apply(variables, **{k: batch[k] for k in input_names}, train=True,
                      rngs={"dropout": rng}, mutable=["batch_stats"] if has_stats else False)
    logits, new_vars = out if has_stats else (out, {})
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    weights = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(logits.shape[:1])
    loss_sum = jnp.sum(losses * weights)
    loss = loss_sum / jnp.maximum(jnp.sum(weights), 1.0)
    return loss, (logits, new_vars.get("batch_stats", batch_stats), weights, loss_sum)

  return apply


def _vmap_reference(apply, params, batch_stats, batch, rng, keys, group_grads):
  """The pre-issue-29 grouped path: every microbatch's gradient at once, under a vmap."""
  micro = {k: batch[k].reshape((M, -1) + batch[k].shape[1:]) for k in keys if k in batch}
  first = jax.lax.axis_index(AXIS) * M
  key = lambda: jax.random.fold_in(rng, first + jax.lax.axis_index(MICRO))

  def one(mb):
    (_, (logits, stats, weights, loss_sum)), grads = jax.value_and_grad(apply, has_aux=True)(
        params, batch_stats, mb, key())
    correct = jnp.sum((jnp.argmax(logits, -1) == mb["label"]) * weights)
    return grads, groups._sq_norm(grads), loss_sum, jnp.sum(weights), correct, stats

  grads, sq_norms, loss_sums, counts, correct, stats = jax.vmap(one, axis_name=MICRO)(micro)
  grads = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
  sq_norm, n = (jnp.mean(sq_norms), M) if group_grads else (groups._sq_norm(grads), 1)
  stats = jax.lax.pmean(jax.tree.map(lambda x: jnp.mean(x, 0), stats), AXIS)
  return (grads, sq_norm, n, jnp.sum(loss_sums) / jnp.sum(counts), jnp.sum(correct),
          jnp.sum(counts), stats)


class _BatchNormNet(nn.Module):
  """A small conv net with BatchNorm (per group: no axis_name) and dropout."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.2, deterministic=not train)(jnp.mean(x, (1, 2)))
    return nn.Dense(3)(x)


class _LstmNet(nn.Module):
  """A small LSTM with dropout."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.Embed(50, 8)(x)
    x = nn.RNN(nn.OptimizedLSTMCell(8))(x)
    x = nn.Dropout(0.3, deterministic=not train)(x[:, -1])
    return nn.Dense(3)(x)


def _case(name):
  if name in ("batchnorm", "lstm"):
    model, shape, dtype = ((_BatchNormNet(), (6, 6, 1), np.float32) if name == "batchnorm"
                           else (_LstmNet(), (5,), np.int32))
    spec = models.InputSpec("x", shape, dtype)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape), dtype), train=False)
    inputs, input_names = [spec], ("x",)
  elif name == "resnet":
    model, spec = models.get("resnet", "tiny", num_classes=10, in_channels=1, image_size=12,
                             axis_name=step_lib.model_axis_name(True))
  else:
    model, spec = models.get("lstm_attention", "tiny", num_classes=3, seq_len=12,
                             vocab_size=50, dropout_rate=0.3)
  if name not in ("batchnorm", "lstm"):
    variables = spec.init(jax.random.key(0))
    inputs, input_names = spec.inputs, spec.input_names
  rng = np.random.default_rng(1)
  n = DEVICES * PER_DEVICE
  batch = {}
  for s in inputs:
    if np.issubdtype(s.dtype, np.integer):
      batch[s.name] = rng.integers(2, 50, (n, *s.shape)).astype(s.dtype)
    else:
      batch[s.name] = rng.standard_normal((n, *s.shape)).astype(s.dtype)
  batch["label"] = rng.integers(0, 3, n).astype(np.int32)
  batch["mask"] = (rng.random(n) < 0.9).astype(np.float32)
  batch = {k: v.reshape((DEVICES, PER_DEVICE) + v.shape[1:]) for k, v in batch.items()}
  apply = _apply_fn(model, input_names, "batch_stats" in variables)
  keys = ("label", "mask", *input_names)
  return apply, variables["params"], variables.get("batch_stats", {}), batch, keys


@pytest.mark.parametrize("name, group_grads", [
    ("batchnorm", True), ("batchnorm", False), ("lstm", True), ("lstm", False),
    pytest.param("lstm_attention", True, marks=pytest.mark.slow),
    pytest.param("resnet", True, marks=pytest.mark.slow)])
def test_the_sequential_groups_give_the_vmaps_results(name, group_grads):
  apply, params, batch_stats, batch, keys = _case(name)
  rng = jax.random.key(7)

  def run(fn):
    per_device = lambda b: fn(apply, params, batch_stats, b, rng, keys, group_grads)
    return jax.jit(jax.vmap(per_device, axis_name=AXIS))(batch)

  def sequential(apply, params, batch_stats, b, rng, keys, group_grads):
    return groups.microbatch_grads(apply, params, batch_stats, b, rng, microbatches=M, keys=keys,
                                   group_grads=group_grads, axis_name=AXIS)

  got, want = run(sequential), run(_vmap_reference)
  names = ("grads", "sq_norm", "groups", "loss", "correct", "count", "batch_stats")
  for field, a, b in zip(names, got, want):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=f"{name}: {field}")
  assert np.all(got[2] == (M if group_grads else 1))
  mean_sq = float(groups._sq_norm(jax.tree.map(lambda g: g[0], got[0])))
  if group_grads:  # not vacuous: the groups' gradients differ, so q > |mean|^2
    assert float(got[1][0]) > 1.01 * mean_sq
  else:
    np.testing.assert_allclose(float(got[1][0]), mean_sq, rtol=1e-6)
  if name in ("batchnorm", "resnet"):
    # The groups' statistics averaged over every device (both hold the same), and moved from
    # the incoming ones.
    leaf = jax.tree.leaves(got[-1])[0]
    np.testing.assert_array_equal(leaf[0], leaf[1])
    assert not np.allclose(leaf[0], jax.tree.leaves(batch_stats)[0])


def test_the_dropout_keys_are_the_groups_own():
  """Swapping the key of one group changes the result: the scan folds in r*m + i, not one key."""
  apply, params, batch_stats, batch, keys = _case("lstm")

  def run(rng):
    fn = lambda b: groups.microbatch_grads(apply, params, batch_stats, b, rng, microbatches=M,
                                           keys=keys, group_grads=True, axis_name=AXIS)
    return jax.jit(jax.vmap(fn, axis_name=AXIS))(batch)

  a, b = run(jax.random.key(7)), run(jax.random.key(8))
  assert not np.allclose(a[1], b[1])

"""gradvar composes with Optax's wrappers and with Flax's training states."""

from flax import nnx
from flax.training import train_state
from gradvar_reference import Reference
from gradvar_reference import stream
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradvar_optax


def _replay(opt, grads_seq, jit=True, **extra):
  params = jax.tree.map(jnp.zeros_like, grads_seq[0])
  state = opt.init(params)
  update = jax.jit(opt.update) if jit else opt.update
  out = []
  for g in grads_seq:
    updates, state = update(g, state, params, **extra)
    out.append((updates, state))
  return out


def test_inject_hyperparams_factor_and_bounds():
  grads_seq = stream("falling", steps=100, seed=7)
  opt = optax.inject_hyperparams(gradvar_optax.gradvar, static_args=("window",))(
      optax.sgd(1.0), factor=0.1, max_scale=1.5)
  params = jax.tree.map(jnp.zeros_like, grads_seq[0])
  state = opt.init(params)
  update = jax.jit(opt.update)
  ref = Reference(factor=0.1, max_scale=1.5)
  for t, g in enumerate(grads_seq):
    if t == 50:  # change the injected hyperparameters mid-run, without recompiling
      state.hyperparams["factor"] = jnp.asarray(0.05, jnp.float32)
      state.hyperparams["max_scale"] = jnp.asarray(2.0, jnp.float32)
      ref.factor, ref.max_scale = 0.05, 2.0
    _, state = update(g, state, params)
    np.testing.assert_allclose(float(gradvar_optax.lr_scale(state)), ref.step(jax.tree.leaves(g)),
                               rtol=1e-6)
  assert update._cache_size() == 1
  assert float(gradvar_optax.lr_scale(state)) > 1.5  # the raised bound took effect


def test_inject_hyperparams_without_static_window_says_how():
  with pytest.raises(ValueError, match="static_args"):
    optax.inject_hyperparams(gradvar_optax.gradvar)(optax.sgd(1.0)).init({"w": jnp.ones(2)})


def test_multisteps_sees_accumulated_gradients():
  k = 3
  grads_seq = stream("random", steps=90, seed=8)
  out = _replay(optax.MultiSteps(gradvar_optax.gradvar(optax.sgd(1.0)), every_k_schedule=k),
                grads_seq)
  ref = Reference()
  expected = []
  for i in range(0, len(grads_seq), k):
    mean = jax.tree.map(lambda *g: np.mean(np.stack(g), 0), *grads_seq[i:i + k])
    expected.append(ref.step(jax.tree.leaves(mean)))
  final = out[-1][1]
  assert int(final.inner_opt_state.count) == len(grads_seq) // k
  got = [float(gradvar_optax.lr_scale(s)) for _, s in out][k - 1::k]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_apply_if_finite_skips_whole_step_and_gradvar_state():
  opt = optax.apply_if_finite(gradvar_optax.gradvar(optax.adam(1e-3)), max_consecutive_errors=3)
  grads_seq = stream("random", steps=8, seed=9)
  grads_seq[3] = jax.tree.map(lambda x: x * np.nan, grads_seq[3])
  out = _replay(opt, grads_seq)
  before, after = out[2][1], out[3][1]
  assert int(after.notfinite_count) == 1
  jax.tree.map(np.testing.assert_array_equal, after.inner_state, before.inner_state)
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), out[3][0])
  final = out[-1][1].inner_state
  assert int(final.count) == 7 and int(final.skipped) == 0


def test_chain_with_clipping_measures_clipped_gradients():
  grads_seq = stream("random", steps=40, seed=10)
  big = [jax.tree.map(lambda x: 100 * x, g) for g in grads_seq]
  opt = optax.chain(optax.clip_by_global_norm(1.0), gradvar_optax.gradvar(optax.adam(1e-3)))
  out = _replay(opt, big)
  state = out[-1][1][1]
  np.testing.assert_allclose(np.asarray(state.norms), 1.0, rtol=1e-5)  # all clipped to norm 1
  assert float(state.variability) < 1e-6


def test_multi_transform_and_several_states():
  params = {"enc": jnp.ones(3), "head": jnp.ones(2)}
  labels = {"enc": "gv", "head": "plain"}
  opt = optax.multi_transform({"gv": gradvar_optax.gradvar(optax.adam(1e-3)),
                               "plain": optax.sgd(1e-2)}, labels)
  state = opt.init(params)
  updates, state = jax.jit(opt.update)(params, state, params)
  assert float(gradvar_optax.lr_scale(state)) == 1.0
  np.testing.assert_allclose(updates["head"], -1e-2 * np.ones(2))

  two = optax.multi_transform({"gv": gradvar_optax.gradvar(optax.adam(1e-3)),
                               "plain": gradvar_optax.scale_by_gradvar()}, labels)
  with pytest.raises(ValueError, match="2 GradVarStates"):
    gradvar_optax.lr_scale(two.init(params))
  with pytest.raises(ValueError, match="No GradVarState"):
    gradvar_optax.variability(optax.adam(1e-3).init(params))


def test_reduce_on_plateau_as_base_receives_value():
  base = optax.chain(optax.sgd(1.0),
                     optax.contrib.reduce_on_plateau(factor=0.5, patience=1, accumulation_size=1))
  opt = gradvar_optax.gradvar(base)
  params = {"w": jnp.zeros(3)}
  state = opt.init(params)
  update = jax.jit(opt.update)
  g = {"w": jnp.ones(3)}
  for _ in range(4):  # a loss that never improves halves the plateau scale
    updates, state = update(g, state, params, value=jnp.asarray(1.0))
  plateau_scale = float(optax.tree_utils.tree_get(state, "scale"))
  assert plateau_scale < 1.0
  np.testing.assert_allclose(updates["w"], -plateau_scale * float(gradvar_optax.lr_scale(state)))


def test_flax_nnx_optimizer():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, gradvar_optax.gradvar(optax.adam(1e-2)), wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 3)), jnp.float32)

  @nnx.jit
  def step(model, optimizer, scale):
    grads = nnx.grad(lambda m: jnp.mean(m(x * scale) ** 2))(model)
    optimizer.update(model, grads)
    return grads

  ref = Reference()
  scales = []
  for t in range(30):
    grads = step(model, optimizer, jnp.asarray(1.0 + 0.5 * np.sin(t), jnp.float32))
    expected = ref.step(jax.tree.leaves(grads))
    got = gradvar_optax.lr_scale(optimizer.opt_state)
    assert isinstance(got, jax.Array) and got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    scales.append(float(got))
  assert len(set(scales)) > 1  # decisions were taken, in both readings
  np.testing.assert_allclose(float(gradvar_optax.variability(optimizer.opt_state)),
                             ref.variability, rtol=1e-4)


def test_flax_train_state():
  params = {"w": jnp.ones(3)}
  state = train_state.TrainState.create(apply_fn=None, params=params,
                                        tx=gradvar_optax.gradvar(optax.sgd(0.1)))
  for g in stream("falling", steps=15, seed=11):
    state = state.apply_gradients(grads={"w": g["b"]["c"][:3]})
  assert float(gradvar_optax.lr_scale(state.opt_state)) != 1.0
  assert float(gradvar_optax.lr_scale(state)) == float(gradvar_optax.lr_scale(state.opt_state))


def test_adamw_weight_decay_is_scaled_too():
  """With adamw, the whole update, decoupled weight decay included, is times the scale."""
  lr, wd, b1, b2, eps = 1e-2, 0.5, 0.9, 0.999, 1e-8
  grads_seq = stream("falling", steps=40, seed=12)
  params = jax.tree.map(lambda g: np.full_like(g, 3.0), grads_seq[0])  # decay dominates
  opt = gradvar_optax.gradvar(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd))
  state = opt.init(params)
  update = jax.jit(opt.update)
  ref = Reference()
  p = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)]).astype(np.float64)
  m = v = np.zeros_like(p)
  moved = 0
  for t, g in enumerate(grads_seq, start=1):
    updates, state = update(g, state, params)
    scale = float(ref.step(jax.tree.leaves(g)))
    # AdamW's step, written out: Adam's direction plus wd * params, all times the LR.
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]).astype(np.float64)
    m, v = b1 * m + (1 - b1) * flat, b2 * v + (1 - b2) * flat**2
    direction = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    expected = -scale * lr * (direction + wd * p)
    got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)])
    # float32 Adam (b2 = 0.999 rounds to float32 in the bias correction) against float64.
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    if scale != 1.0:
      moved += 1
      # The alternative, a decay left unscaled, is far outside the tolerance.
      unscaled_decay = -scale * lr * direction - lr * wd * p
      assert np.max(np.abs(unscaled_decay - expected) / np.abs(expected)) > 1e-2
  assert moved > 10

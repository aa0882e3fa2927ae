"""gns drops into the loops people write: `grouped_grad`'s GroupedGrads, the readouts on any
state shape, and inputs that fail loudly (issue 29)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradvar_optax

N, STEPS = 4, 12
KW = dict(warmup_steps=3, decay=0.5)


def _loss(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _data(steps=STEPS):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((steps, 16, 3)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.standard_normal((steps, 16))).astype(
      np.float32)
  return x, y


PARAMS = {"w": jnp.zeros(3), "b": jnp.zeros(())}


def _keyword_run(opt, steps=STEPS):
  """The reference: the keyword form, fed by microbatch_grad (the vmap)."""
  params, state = PARAMS, opt.init(PARAMS)
  grad_fn = gradvar_optax.microbatch_grad(_loss, N)
  out = []
  for x, y in zip(*_data(steps)):
    grads, q = grad_fn(params, x, y)
    updates, state = opt.update(grads, state, params, group_sq_norm=q, num_groups=N)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def _grouped_run(opt, steps=STEPS):
  params, state = PARAMS, opt.init(PARAMS)
  grad_fn = jax.jit(gradvar_optax.grouped_grad(_loss, N))
  update = jax.jit(opt.update)
  out = []
  for x, y in zip(*_data(steps)):
    g = grad_fn(params, x, y)
    assert isinstance(g, gradvar_optax.GroupedGrads) and g.num_groups == N
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def _assert_same_run(got, want):
  for t, ((p, s), (p_ref, s_ref)) in enumerate(zip(got, want, strict=True)):
    for read in (gradvar_optax.noise_to_signal, gradvar_optax.lr_scale):
      np.testing.assert_allclose(float(read(s)), float(read(s_ref)), rtol=1e-4, atol=1e-6,
                                 err_msg=f"step {t}")
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), p, p_ref)
  assert float(gradvar_optax.lr_scale(want[-1][1])) < 1.0  # the scale moved: the runs compared


def test_grouped_grad_is_microbatch_grads_mean_and_q():
  x, y = _data(1)
  g = jax.jit(gradvar_optax.grouped_grad(_loss, N))(PARAMS, x[0], y[0])
  grads, q = gradvar_optax.microbatch_grad(_loss, N)(PARAMS, x[0], y[0])
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), g.grads, grads)
  np.testing.assert_allclose(g.group_sq_norm, q, rtol=1e-6)
  full = jax.grad(_loss)(PARAMS, x[0], y[0])  # equal groups: the mean is the batch's gradient
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), g.grads, full)
  assert float(g.group_sq_norm) > float(optax.tree.norm(g.grads)) ** 2  # the groups differ


def test_grouped_grad_folds_a_key_per_group_and_returns_aux():
  def loss(params, x, rng):
    return jnp.sum(params * x) * jax.random.uniform(rng), jax.random.key_data(rng)

  fn = gradvar_optax.grouped_grad(loss, 2, has_aux=True)
  key = jax.random.key(3)
  g, keys = fn(jnp.ones(()), jnp.ones(4), rng=key)
  for i in range(2):
    np.testing.assert_array_equal(keys[i], jax.random.key_data(jax.random.fold_in(key, i)))
  assert g.num_groups == 2 and float(g.group_sq_norm) > float(g.grads) ** 2


@pytest.mark.parametrize("wrap", ["plain", "chain", "inject", "multisteps", "if_finite"])
def test_grouped_grads_through_optax_wrappers_match_the_keyword_form(wrap):
  base = optax.adam(1e-2)
  if wrap == "inject":
    make = lambda b: optax.inject_hyperparams(gradvar_optax.gns)(b, **KW)
  else:
    make = lambda b: gradvar_optax.gns(b, **KW)
  if wrap == "chain":
    opt = optax.chain(make(base), optax.scale(1.0))
  elif wrap == "multisteps":
    opt = make(optax.MultiSteps(base, 2))
  elif wrap == "if_finite":
    opt = make(optax.apply_if_finite(base, 3))
  else:
    opt = make(base)
  _assert_same_run(_grouped_run(opt), _keyword_run(opt))


def test_grouped_grads_in_a_linen_train_state():
  train_state = pytest.importorskip("flax.training.train_state")
  opt = gradvar_optax.gns(optax.adam(1e-2), **KW)
  state = train_state.TrainState.create(apply_fn=None, params=PARAMS, tx=opt)

  @jax.jit
  def step(state, x, y):
    return state.apply_gradients(grads=gradvar_optax.grouped_grad(_loss, N)(state.params, x, y))

  out = []
  for x, y in zip(*_data()):
    state = step(state, x, y)
    out.append((state.params, state.opt_state))
  _assert_same_run(out, _keyword_run(opt))


def test_grouped_grads_in_an_nnx_optimizer():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self):
      self.w, self.b = nnx.Param(jnp.zeros(3)), nnx.Param(jnp.zeros(()))

  model = Model()
  optimizer = nnx.Optimizer(model, gradvar_optax.gns(optax.adam(1e-2), **KW), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p, x, y: _loss({"w": p["w"], "b": p["b"]}, x, y)
    g = gradvar_optax.grouped_grad(loss, N)(params, x, y)
    optimizer.update(model, g.grads, **g.extra_args)

  out = []
  for x, y in zip(*_data()):
    step(model, optimizer, x, y)
    # The optimizer's state changes in place: keep a copy of this step's (dict-shaped).
    out.append(({"w": model.w[...], "b": model.b[...]},
                jax.tree.map(np.array, nnx.state(optimizer))))
  _assert_same_run(out, _keyword_run(gradvar_optax.gns(optax.adam(1e-2), **KW)))
  # The readouts read nnx.state and nnx.split's dict-shaped states too.
  for state in (nnx.state(optimizer), nnx.split(optimizer)[1]):
    assert float(gradvar_optax.lr_scale(state)) == float(gradvar_optax.lr_scale(
        optimizer.opt_state)) < 1.0


def test_group_statistics_stated_twice_or_of_the_wrong_shape_are_refused():
  opt = gradvar_optax.gns(optax.sgd(1.0))
  state = opt.init(PARAMS)
  x, y = _data(1)
  g = gradvar_optax.grouped_grad(_loss, N)(PARAMS, x[0], y[0])
  with pytest.raises(ValueError, match="carries its own group_sq_norm and num_groups"):
    opt.update(g, state, PARAMS, num_groups=N)
  for bad in (jnp.ones(N), {"q": 1.0}, [1.0, 2.0]):
    with pytest.raises(ValueError, match="group_sq_norm must be a scalar"):
      opt.update(g.grads, state, PARAMS, group_sq_norm=bad, num_groups=N)
    with pytest.raises(ValueError, match="group_sq_norm must be a scalar"):  # traced, too
      jax.jit(lambda q: opt.update(g.grads, state, PARAMS, group_sq_norm=q, num_groups=N))(bad)
  with pytest.raises(ValueError, match="num_groups must be a scalar"):
    opt.update(g.grads, state, PARAMS, group_sq_norm=1.0, num_groups=jnp.array([2, 2]))


@pytest.mark.parametrize("q", [-1.0, np.nan, np.inf])
def test_a_negative_or_non_finite_q_is_a_skipped_step(q):
  opt = gradvar_optax.gns(optax.sgd(1.0), warmup_steps=1)
  state = opt.init(PARAMS)
  grads = {"w": jnp.ones(3), "b": jnp.ones(())}
  _, state = jax.jit(opt.update)(grads, state, PARAMS, group_sq_norm=jnp.float32(q),
                                 num_groups=N)
  assert int(state.skipped) == 1 and int(state.count) == 0
  assert float(state.noise_to_signal) == 0.0 and float(state.lr_scale) == 1.0
  # A valid q counts: the check is not vacuous.
  _, state = opt.update(grads, state, PARAMS, group_sq_norm=jnp.float32(8.0), num_groups=N)
  assert int(state.count) == 1 and float(state.noise_to_signal) > 0.0


@pytest.mark.parametrize("make, name", [(gradvar_optax.gradvar, "gradvar"),
                                        (gradvar_optax.gns, "gns")])
def test_the_card_form_says_to_wrap_the_base_optimizer(make, name):
  with pytest.raises(TypeError, match=rf"write {name}\(optax.adam\(1e-3\)\), not optax.chain"):
    optax.chain(make(), optax.adam(1e-3))
  with pytest.raises(TypeError, match=rf"{name}\(\) wraps the optimizer"):
    make(1e-3)


def test_readouts_on_dict_shaped_and_batched_states(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  opt = optax.chain(optax.identity(), gradvar_optax.gns(optax.adam(1e-2), **KW))
  final = _grouped_run(opt)[-1][1]
  want = float(gradvar_optax.lr_scale(final))
  assert want < 1.0
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "ckpt", final)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / "ckpt")  # no target: dicts and lists
  assert not isinstance(jax.tree.leaves(restored, is_leaf=lambda x: isinstance(
      x, gradvar_optax.GNSState)), gradvar_optax.GNSState)
  for read in (gradvar_optax.lr_scale, gradvar_optax.noise_to_signal):
    assert float(read(restored)) == float(read(final))
  # A 0.2 state restored without a target holds ema_weight as well: still read.
  old = {"0": {}, "1": {**final[1]._asdict(), "ema_weight": jnp.float32(1.0)}}
  assert float(gradvar_optax.lr_scale(old)) == want
  # Batched over 3 runs: one value per run, never the first alone.
  runs = jax.tree.map(lambda a, b, c: jnp.stack([a, b, c]), final, final,
                      (final[0], final[1]._replace(lr_scale=jnp.float32(0.5))))
  np.testing.assert_array_equal(gradvar_optax.lr_scale(runs), [want, want, 0.5])
  np.testing.assert_array_equal(jax.jit(gradvar_optax.lr_scale)(runs), [want, want, 0.5])
  with pytest.raises(ValueError, match="No GradVarState or GNSState .* expected an optimizer"):
    gradvar_optax.lr_scale({"lr": jnp.float32(1.0)})

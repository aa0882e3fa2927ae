"""gradvar under jax.pmap and jax.shard_map on 8 host CPU devices (see conftest.py)."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

import gradvar_optax

N_DEV = 8
STEPS = 60  # 12 decisions


def _data(seed=0, per_device=4, dim=6):
  """A regression stream whose batches differ enough to move the gradient norm around."""
  rng = np.random.default_rng(seed)
  w_true = rng.standard_normal(dim).astype(np.float32)
  xs = rng.standard_normal((STEPS, N_DEV * per_device, dim)).astype(np.float32)
  xs *= rng.uniform(0.3, 2.0, (STEPS, 1, 1)).astype(np.float32)
  ys = xs @ w_true + 0.3 * rng.standard_normal(xs.shape[:2]).astype(np.float32)
  return xs, ys


def _loss(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _opt(**kw):
  return gradvar_optax.gradvar(optax.adam(0.05), **kw)


def _train_step(params, opt_state, x, y, opt, axis_name=None, average=True):
  """The per-device step; `axis_name=None` is the single-device run on the global batch."""
  grads = jax.grad(_loss)(params, x, y)
  if axis_name is not None and average:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _init(opt):
  params = {"w": jnp.zeros(6), "b": jnp.zeros(())}
  return params, opt.init(params)


def _run_single(xs, ys):
  opt = _opt()
  params, state = _init(opt)
  step = jax.jit(functools.partial(_train_step, opt=opt))
  scales = []
  for x, y in zip(xs, ys):
    params, state = step(params, state, x, y)
    scales.append(float(state.lr_scale))
  return params, state, scales


def _run_pmap(xs, ys, **kw):
  opt = _opt(**{k: v for k, v in kw.items() if k == "axis_name"})
  params, state = _init(opt)
  replicate = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (N_DEV,) + x.shape), t)
  params, state = replicate(params), replicate(state)
  step = jax.pmap(functools.partial(_train_step, opt=opt, axis_name="batch",
                                    average=kw.get("average", True)),
                  axis_name="batch", donate_argnums=(0, 1))
  scales = []
  for x, y in zip(xs, ys):
    params, state = step(params, state, x.reshape(N_DEV, -1, x.shape[-1]), y.reshape(N_DEV, -1))
    per_replica = np.asarray(gradvar_optax.lr_scale(state))  # one value per replica
    assert per_replica.shape == (N_DEV,) and np.all(per_replica == per_replica[0])
    scales.append(float(per_replica[0]))
  return params, state, scales


def _run_shard_map(xs, ys):
  opt = _opt()
  params, state = _init(opt)
  mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("batch",))
  # check_vma=False gives the step pmap's semantics: with the check on, shard_map would itself
  # sum the gradient of the replicated params over the axis, and the explicit pmean would then
  # average a sum (8x the mean gradient).
  step = jax.jit(jax.shard_map(
      functools.partial(_train_step, opt=opt, axis_name="batch"), mesh=mesh,
      in_specs=(P(), P(), P("batch"), P("batch")), out_specs=(P(), P()), check_vma=False),
      donate_argnums=(0, 1))
  data = NamedSharding(mesh, P("batch"))
  scales = []
  for x, y in zip(xs, ys):
    params, state = step(params, state, jax.device_put(x, data), jax.device_put(y, data))
    scales.append(float(gradvar_optax.lr_scale(state)))
  return params, state, scales


def _first_replica(tree):
  return jax.tree.map(lambda x: np.asarray(x)[0], tree)


def test_pmap_and_shard_map_are_bitwise_equal_and_match_one_device():
  assert jax.device_count() >= N_DEV
  xs, ys = _data()
  p_pmap, s_pmap, sc_pmap = _run_pmap(xs, ys)
  p_smap, s_smap, sc_smap = _run_shard_map(xs, ys)
  p_one, s_one, sc_one = _run_single(xs, ys)
  assert len(set(sc_one)) > 2, "the stream should move the scale"

  jax.tree.map(np.testing.assert_array_equal, _first_replica(p_pmap), jax.device_get(p_smap))
  jax.tree.map(np.testing.assert_array_equal, _first_replica(s_pmap), jax.device_get(s_smap))
  assert sc_pmap == sc_smap

  # One device on the same global batch: the same decisions, params to float tolerance.
  np.testing.assert_array_equal(np.sign(np.diff(sc_pmap)), np.sign(np.diff(sc_one)))
  np.testing.assert_allclose(sc_pmap, sc_one, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               _first_replica(p_pmap), jax.device_get(p_one))


def test_axis_name_keeps_replicas_identical_with_unaveraged_gradients():
  xs, ys = _data(seed=1)
  params, state, scales = _run_pmap(xs, ys, axis_name="batch", average=False)
  # The replicas' params drifted apart (each used its own gradients) ...
  w = np.asarray(params["w"])
  assert not np.allclose(w[0], w[1])
  # ... yet every replica holds the same gradvar statistics and scale.
  for name in ("norms", "count", "skipped", "variability", "reference", "lr_scale"):
    values = np.asarray(getattr(state, name))
    np.testing.assert_array_equal(values, np.broadcast_to(values[0], values.shape), err_msg=name)
  assert len(set(scales)) > 2

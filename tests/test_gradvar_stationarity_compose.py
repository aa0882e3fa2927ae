"""reduce_on_stationarity composes with Optax's wrappers, round-trips through orbax and decides
alike on every replica under pmap and shard_map (8 host CPU devices, see conftest.py)."""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import gradvar_optax

N_DEV = 8
STEPS = 400
# Small enough that a 400-step stream drops a few times.
KW = dict(test_every=5, min_samples=16, keep_fraction=0.5, capacity=64)


def _data(seed=0, per_device=4, dim=6):
  """A noisy linear regression: SGD reaches its noise floor in about 100 steps."""
  rng = np.random.default_rng(seed)
  w_true = rng.standard_normal(dim).astype(np.float32)
  xs = rng.standard_normal((STEPS, N_DEV * per_device, dim)).astype(np.float32)
  ys = xs @ w_true + rng.standard_normal(xs.shape[:2]).astype(np.float32)
  return xs, ys


def _loss(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2) / 2


def _init(opt):
  params = {"w": jnp.zeros(6), "b": jnp.zeros(())}
  return params, opt.init(params)


def _train_step(params, opt_state, x, y, opt, axis_name=None, average=True):
  grads = jax.grad(_loss)(params, x, y)
  if axis_name is not None and average:
    grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = opt.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def _run(opt, xs, ys, steps=None, params=None, state=None):
  if params is None:
    params, state = _init(opt)
  step = jax.jit(functools.partial(_train_step, opt=opt))
  scales = []
  for x, y in zip(xs[:steps], ys[:steps]):
    params, state = step(params, state, x, y)
    scales.append(float(gradvar_optax.lr_scale(state)))
  assert step._cache_size() == 1
  return params, state, scales


def test_inject_hyperparams_and_chain_take_the_same_decisions():
  xs, ys = _data()
  _, state, scales = _run(gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW), xs, ys)
  assert int(gradvar_optax.stationarity_drops(state)) >= 2, "the stream should drop"
  injected = optax.inject_hyperparams(gradvar_optax.reduce_on_stationarity,
                                      static_args=("capacity",))(optax.sgd(0.1), **KW)
  _, _, scales_injected = _run(injected, xs, ys)
  assert scales_injected == scales
  # Clipping before the wrapper or inside it: the same updates, so the same statistic.
  clip = lambda: optax.clip_by_global_norm(0.5)
  outside = optax.chain(clip(), gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW))
  inside = gradvar_optax.reduce_on_stationarity(optax.chain(clip(), optax.sgd(0.1)), **KW)
  p_out, _, sc_out = _run(outside, xs, ys)
  p_in, _, sc_in = _run(inside, xs, ys)
  assert sc_out == sc_in and len(set(sc_out)) > 1
  jax.tree.map(np.testing.assert_array_equal, p_out, p_in)


def test_apply_if_finite_outside_skips_the_whole_step():
  xs, ys = _data(seed=1)
  bad = set(range(3, STEPS, 41))
  ys_bad = ys.copy()
  ys_bad[sorted(bad)] = np.nan
  opt = optax.apply_if_finite(gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW), 100)
  params, state, scales = _run(opt, xs, ys_bad)
  inner = state.inner_state
  assert int(inner.skipped) == 0 and int(state.total_notfinite) == len(bad)
  keep = [t for t in range(STEPS) if t not in bad]
  p_ref, s_ref, sc_ref = _run(gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW),
                              xs[keep], ys[keep])
  assert [scales[t] for t in keep] == sc_ref
  jax.tree.map(np.testing.assert_array_equal, (params, inner), (p_ref, s_ref))


def test_multisteps_tests_the_accumulated_steps():
  k = 2
  xs, ys = _data(seed=2)
  opt = optax.MultiSteps(gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW), k)
  params, state, scales = _run(opt, xs, ys)
  # The wrapper sees one mean gradient per k mini-steps, at the params of the last apply.
  ref_opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW)
  p, s = _init(ref_opt)
  update = jax.jit(ref_opt.update)
  for t in range(0, STEPS, k):
    g = jax.tree.map(lambda *a: sum(a) / k, *[jax.grad(_loss)(p, xs[i], ys[i])
                                             for i in range(t, t + k)])
    u, s = update(g, s, p)
    p = optax.apply_updates(p, u)
    assert float(s.lr_scale) == scales[t + k - 1]
  assert int(s.drops) >= 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, p)


def test_resume_from_orbax_mid_bucket_is_exact(tmp_path):
  xs, ys = _data(seed=3)
  opt = gradvar_optax.reduce_on_stationarity(optax.adam(0.05), **KW)
  uninterrupted = _run(opt, xs, ys)[:2]
  stop = 250
  params, state, _ = _run(opt, xs, ys, steps=stop)
  assert int(state.drops) >= 1 and int(state.count) > 0  # after a drop, with samples in the bucket
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(stop, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
    mngr.wait_until_finished()
  abstract = jax.eval_shape(lambda: dict(zip(("params", "opt_state"), _init(opt))))
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))
  assert isinstance(restored["opt_state"], gradvar_optax.StationarityState)
  resumed = _run(opt, xs[stop:], ys[stop:], params=restored["params"],
                 state=restored["opt_state"])[:2]
  assert int(uninterrupted[1].drops) > int(state.drops), "the rest should drop again"
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


def _run_pmap(opt, xs, ys, average=True):
  params, state = _init(opt)
  replicate = lambda t: jax.tree.map(lambda x: jnp.broadcast_to(x, (N_DEV,) + x.shape), t)
  params, state = replicate(params), replicate(state)
  step = jax.pmap(functools.partial(_train_step, opt=opt, axis_name="batch", average=average),
                  axis_name="batch", donate_argnums=(0, 1))
  scales = []
  for x, y in zip(xs, ys):
    params, state = step(params, state, x.reshape(N_DEV, -1, x.shape[-1]), y.reshape(N_DEV, -1))
    scales.append(float(np.asarray(state.lr_scale)[0]))
  return params, state, scales


def _run_shard_map(opt, xs, ys):
  params, state = _init(opt)
  mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("batch",))
  # check_vma=False gives pmap's semantics (see tests/test_gradvar_parallel.py).
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


def test_pmap_shard_map_and_one_device_take_the_same_decisions():
  assert jax.device_count() >= N_DEV
  xs, ys = _data(seed=4)
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), **KW)
  p_pmap, s_pmap, sc_pmap = _run_pmap(opt, xs, ys)
  p_smap, s_smap, sc_smap = _run_shard_map(opt, xs, ys)
  p_one, s_one, sc_one = _run(opt, xs, ys)
  assert int(s_one.drops) >= 2, "the stream should drop"
  first = lambda t: jax.tree.map(lambda x: np.asarray(x)[0], t)
  jax.tree.map(np.testing.assert_array_equal, first((p_pmap, s_pmap)),
               jax.device_get((p_smap, s_smap)))
  # Every replica holds the same state.
  for leaf in jax.tree.leaves(s_pmap):
    np.testing.assert_array_equal(leaf, np.broadcast_to(np.asarray(leaf)[0], leaf.shape))
  assert sc_pmap == sc_smap == sc_one
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               first(p_pmap), jax.device_get(p_one))


def test_axis_name_keeps_replicas_deciding_alike_with_unaveraged_gradients():
  xs, ys = _data(seed=5)
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), axis_name="batch", **KW)
  params, state, scales = _run_pmap(opt, xs, ys, average=False)
  w = np.asarray(params["w"])
  assert not np.allclose(w[0], w[1])  # each replica stepped with its own gradients
  for name in ("samples", "count", "drops", "test_mean", "test_lower", "lr_scale"):
    values = np.asarray(getattr(state, name))
    np.testing.assert_array_equal(values, np.broadcast_to(values[0], values.shape), err_msg=name)
  assert int(np.asarray(state.drops)[0]) >= 1


def _worker_env(devices):
  env = dict(os.environ)
  env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                           "--xla_cpu_multi_thread_eigen=false",
              "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
  return env


@pytest.mark.slow  # three processes start JAX and join a jax.distributed run
@pytest.mark.multiprocess
@pytest.mark.timeout(900)
def test_two_processes_of_two_devices_decide_as_one_process_of_four(tmp_path):
  """The same drops over real jax.distributed processes (gloo on 127.0.0.1)."""
  worker = pathlib.Path(__file__).with_name("stationarity_multihost_worker.py")
  logs = []

  def start(out, devices, *distributed):
    log = open(tmp_path / f"{out}.log", "w")
    logs.append(tmp_path / f"{out}.log")
    return subprocess.Popen([sys.executable, str(worker), str(tmp_path / f"{out}.json"),
                             *distributed], env=_worker_env(devices), stdout=log,
                            stderr=subprocess.STDOUT)

  holder = socket.socket()  # holds a free port for the coordinator, which binds it too
  holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  holder.bind(("127.0.0.1", 0))
  coordinator = f"127.0.0.1:{holder.getsockname()[1]}"
  procs = [start("one", 4)] + [start(f"two{i}", 2, coordinator, "2", str(i)) for i in range(2)]
  try:
    codes = [p.wait(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    holder.close()
  assert codes == [0, 0, 0], "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}"
                                       for log in logs)
  one, *two = [json.loads((tmp_path / f"{name}.json").read_text())
               for name in ("one", "two0", "two1")]
  assert (one["process_count"], one["device_count"]) == (1, 4)
  assert one["steps"][-1]["drops"] >= 1, "the run should drop"
  for got in two:
    assert (got["process_count"], got["device_count"]) == (2, 4)
    for t, (a, b) in enumerate(zip(got["steps"], one["steps"])):
      for name in ("lr_scale", "drops", "count", "test_step"):
        assert a[name] == b[name], f"{name} at step {t}"
      for name in ("test_mean", "test_lower", "test_upper"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-7,
                                   err_msg=f"{name} at step {t}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got["params"], one["params"])

"""The state round-trips through orbax mid-window, and a jitted step never recompiles."""

from gradvar_reference import poison
from gradvar_reference import stream
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import gradvar_optax


def _opt():
  return gradvar_optax.gradvar(optax.adamw(1e-2, weight_decay=1e-3))


def _step_fn(opt):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step)


def test_resume_from_orbax_mid_window_is_exact(tmp_path):
  grads_seq = poison(stream("random", steps=40, seed=12), every=9)
  opt = _opt()
  step = _step_fn(opt)
  params0 = jax.tree.map(jnp.ones_like, grads_seq[0])

  params, state = params0, opt.init(params0)
  for g in grads_seq:
    params, state = step(params, state, g)
  uninterrupted = (params, state)

  stop = 17  # 17 steps with one skipped: 16 finite, slot 1 of a window of 5
  params, state = params0, opt.init(params0)
  for g in grads_seq[:stop]:
    params, state = step(params, state, g)
  assert int(state.count) % 5 != 0
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(stop, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
    mngr.wait_until_finished()
  del params, state

  abstract = jax.eval_shape(lambda: {"params": params0, "opt_state": opt.init(params0)})
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))
  params, state = restored["params"], restored["opt_state"]
  assert isinstance(state, gradvar_optax.GradVarState)
  for g in grads_seq[stop:]:
    params, state = step(params, state, g)

  assert float(uninterrupted[1].lr_scale) != 1.0, "the stream should move the scale"
  jax.tree.map(np.testing.assert_array_equal, (params, state), uninterrupted)


def test_second_call_never_recompiles():
  opt = _opt()
  step = _step_fn(opt)
  grads_seq = poison(stream("random", steps=30, seed=13), every=4)
  params = jax.tree.map(jnp.ones_like, grads_seq[0])
  state = opt.init(params)
  for g in grads_seq:
    params, state = step(params, state, g)
  assert step._cache_size() == 1
  assert float(state.lr_scale) != 1.0 and int(state.skipped) > 0

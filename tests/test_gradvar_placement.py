"""Where the scale goes: wrapping Adam scales its step; chaining before Adam does not (for long)."""

from gradvar_reference import stream
import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradvar_optax

LR = 1e-2


def _run(opt, grads_seq):
  params = jax.tree.map(jnp.zeros_like, grads_seq[0])
  state = opt.init(params)
  update = jax.jit(opt.update)
  out = []
  for g in grads_seq:
    updates, state = update(g, state, params)
    out.append((updates, state))
  return out


def test_wrapped_adam_is_adam_times_recorded_scale():
  grads_seq = stream("random", steps=200, seed=4)
  wrapped = _run(gradvar_optax.gradvar(optax.adam(LR)), grads_seq)
  plain = _run(optax.adam(LR), grads_seq)
  scales = [float(s.lr_scale) for _, s in wrapped]
  assert len(set(scales)) > 3, "the stream should move the scale"
  for (u_w, s_w), (u_p, _) in zip(wrapped, plain):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b * np.float32(s_w.lr_scale), rtol=1e-6),
        u_w, u_p)


def _step_size(updates):
  return float(optax.tree.norm(updates))


def test_chained_before_adam_is_not_an_lr_multiplier():
  # Phase 1: rising variability drives the scale down.
  # Phase 2: a constant gradient holds the scale still for 600 steps.
  # b2=0.99 gives Adam a second-moment memory of about 100 steps.
  adam = lambda: optax.adam(LR, b2=0.99)
  kw = {}
  phase1 = stream("rising", steps=150, seed=5)
  grads_seq = phase1 + [phase1[0]] * 600
  plain = _run(adam(), grads_seq)
  wrapped = _run(gradvar_optax.gradvar(adam(), **kw), grads_seq)
  chained = _run(optax.chain(gradvar_optax.scale_by_gradvar(**kw), adam()), grads_seq)

  scale_end = float(gradvar_optax.lr_scale(chained[-1][1]))
  assert scale_end <= 0.5
  assert float(gradvar_optax.lr_scale(wrapped[-1][1])) == scale_end
  scales = [float(gradvar_optax.lr_scale(s)) for _, s in chained]
  held_from = max(t for t in range(1, len(scales)) if scales[t] != scales[t - 1])
  assert held_from < 200

  ratio_chained = _step_size(chained[-1][0]) / _step_size(plain[-1][0])
  ratio_wrapped = _step_size(wrapped[-1][0]) / _step_size(plain[-1][0])
  # Once the scale holds still, Adam cancels it: the chained step is plain Adam's again ...
  np.testing.assert_allclose(ratio_chained, 1.0, rtol=1e-2)
  # ... while wrapping keeps Adam's step scaled.
  np.testing.assert_allclose(ratio_wrapped, scale_end, rtol=1e-5)

  # While the scale moved, the chained step followed its motion, not its value: at the end of
  # phase 1 the scale had fallen gradually and Adam's running RMS had mostly caught up.
  t = len(phase1) - 1
  ratio_then = _step_size(chained[t][0]) / _step_size(plain[t][0])
  assert scales[t] < 0.6
  assert ratio_then > 1.4 * scales[t], (ratio_then, scales[t])


def test_chained_before_sgd_is_an_exact_multiplier():
  grads_seq = stream("random", steps=60, seed=6)
  chained = _run(optax.chain(gradvar_optax.scale_by_gradvar(), optax.sgd(LR)), grads_seq)
  for (u, s), g in zip(chained, grads_seq):
    scale = np.float32(gradvar_optax.lr_scale(s))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -LR * scale * b, rtol=1e-6), u, g)

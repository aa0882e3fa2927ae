"""reduce_on_stationarity's `mask`: the test reads only the params it selects."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradvar_optax
from gradvar_optax import _stationarity

OPTIONS = dict(test_every=20, min_samples=20)
LR, DIM, STEPS, DRIFT = 0.1, 4, 400, 1.0


def run(opt, with_drift=True, seed=0):
  """SGD steps on a noisy quadratic `quad` (gradient x + noise, x0 = 3) beside `drift`, whose
  gradient is a constant -DRIFT: SGD moves it by +LR * DRIFT * scale a step, so its |x|^2 grows
  without end and is never stationary. Returns (drop steps, lr_scale per step, final state)."""
  params = {"quad": jnp.full(DIM, 3.0, jnp.float32)}
  if with_drift:
    params["drift"] = jnp.zeros(DIM, jnp.float32)

  def step(carry, key):
    p, s = carry
    g = {"quad": p["quad"] + jax.random.normal(key, (DIM,))}
    if with_drift:
      g["drift"] = jnp.full(DIM, -DRIFT, jnp.float32)
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), (gradvar_optax.lr_scale(s),
                                            gradvar_optax.stationarity_drops(s))

  keys = jax.random.split(jax.random.key(seed), STEPS)
  (_, state), (scales, drops) = jax.jit(
      lambda c, k: jax.lax.scan(step, c, k))((params, opt.init(params)), keys)
  drops = np.asarray(drops)
  return np.nonzero(np.diff(np.concatenate([[0], drops])))[0] + 1, np.asarray(scales), state


def test_the_drifting_param_keeps_the_unmasked_test_from_passing():
  # Closed form: delta = -(<x, u> + |u|^2 / 2) of `drift` alone is -(LR^2 DRIFT^2 DIM)(k + 1/2)
  # at step k (x = k LR DRIFT): it falls without bound, so the bucket's mean is never near 0.
  drops, scales, state = run(gradvar_optax.reduce_on_stationarity(optax.sgd(LR), **OPTIONS))
  assert drops.size == 0 and np.all(scales == 1.0)
  assert float(gradvar_optax.stationarity_test(state).upper) < 0


def test_the_masked_test_is_the_test_on_the_selected_params_alone():
  # With `drift` masked out, the rule takes exactly the decisions it takes on `quad` alone (the
  # same float32 sum over the same leaf), and it drops after the quadratic's transient.
  masked = gradvar_optax.reduce_on_stationarity(
      optax.sgd(LR), mask={"quad": True, "drift": False}, **OPTIONS)
  drops, scales, state = run(masked)
  alone_drops, alone_scales, alone = run(
      gradvar_optax.reduce_on_stationarity(optax.sgd(LR), **OPTIONS), with_drift=False)
  assert drops.size >= 1
  np.testing.assert_array_equal(drops, alone_drops)
  np.testing.assert_array_equal(scales, alone_scales)
  # The first test is due at step 8 * min_samples = 160; x0 = 3 relaxes as 0.9^k, long gone by
  # then, so the drop comes from one of the tests every 20 steps after it (here the fourth).
  assert drops[0] == 220
  got, want = gradvar_optax.stationarity_test(state), gradvar_optax.stationarity_test(alone)
  assert (float(got.mean), float(got.lower)) == (float(want.mean), float(want.lower))


@pytest.mark.parametrize("mask", [
    lambda p: {"quad": True, "drift": False},
    lambda p: jax.tree.map(lambda x: False, p) | {"quad": True},
    {"quad": True, "drift": False},
])
def test_a_callable_or_pytree_mask_gives_the_same_run(mask):
  want, _, _ = run(gradvar_optax.reduce_on_stationarity(
      optax.sgd(LR), mask={"quad": True, "drift": False}, **OPTIONS))
  got, _, _ = run(gradvar_optax.reduce_on_stationarity(optax.sgd(LR), mask=mask, **OPTIONS))
  np.testing.assert_array_equal(got, want)


def test_a_prefix_mask_selects_whole_subtrees():
  params = {"a": {"w": jnp.ones(3), "b": jnp.ones(2)}, "c": jnp.full(2, 2.0)}
  updates = {"a": {"w": jnp.full(3, 0.5), "b": jnp.full(2, -1.0)}, "c": jnp.full(2, 0.25)}
  term = lambda x, u: -float(jnp.sum((x + u / 2) * u))
  want = term(params["a"]["w"], updates["a"]["w"]) + term(params["a"]["b"], updates["a"]["b"])
  got = _stationarity._delta(params, updates, {"a": True, "c": False})
  assert float(got) == pytest.approx(want, rel=1e-6)
  everything = _stationarity._delta(params, updates)
  assert float(_stationarity._delta(params, updates, {"a": True, "c": True})) == float(everything)


def test_the_mask_reads_but_does_not_change_the_updates():
  params = {"quad": jnp.ones(DIM), "drift": jnp.ones(DIM)}
  grads = {"quad": jnp.full(DIM, 0.5), "drift": jnp.full(DIM, -1.0)}
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(LR), mask={"quad": True, "drift": False})
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  np.testing.assert_array_equal(updates["drift"], jnp.full(DIM, LR))
  np.testing.assert_array_equal(updates["quad"], jnp.full(DIM, -0.5 * LR))


@pytest.mark.parametrize("mask, match", [
    ({"quad": 1, "drift": 0}, r"mask must be a pytree of Python bools"),
    ({"quad": jnp.array(True), "drift": False}, r"mask must be a pytree of Python bools"),
    ({"quad": False, "drift": False}, r"mask selects no params"),
])
def test_a_bad_mask_is_refused_at_construction(mask, match):
  with pytest.raises(ValueError, match=match):
    gradvar_optax.reduce_on_stationarity(optax.sgd(LR), mask=mask)


@pytest.mark.parametrize("mask, match", [
    ({"quad": True, "other": False}, r"mask must have the params' tree structure"),
    (lambda p: {"quad": True}, r"mask must have the params' tree structure"),
    (lambda p: jax.tree.map(lambda x: x > 0, p), r"mask\(params\) must be a pytree of Python"),
    (lambda p: jax.tree.map(lambda x: False, p), r"mask\(params\) selects no params"),
])
def test_a_mask_that_does_not_fit_the_params_is_refused_at_update(mask, match):
  params = {"quad": jnp.ones(DIM), "drift": jnp.ones(DIM)}
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(LR), mask=mask)
  with pytest.raises(ValueError, match=match):
    opt.update(params, opt.init(params), params)

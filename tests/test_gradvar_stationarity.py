"""reduce_on_stationarity: the SASA+ rule step by step, on quadratics, and its contract."""

import doctest
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from stationarity_reference import Reference
from stationarity_reference import delta as reference_delta

import gradvar_optax
from gradvar_optax import _batch_means
from gradvar_optax import _stationarity
from gradvar_optax import _stationarity_readout


def quadratic_run(opt, steps, seed=0, dim=10, x0=4.0, sigma=1.0, curvature=None, poison=()):
  """Steps on f(x) = sum(h x^2) / 2 with gradient noise sigma, under jit and lax.scan.

  Returns the per-step params before the step, gradients, updates and lr_scale, drops and
  test_step read inside the scan, and the final state. Steps in `poison` get a NaN gradient
  and their update is not applied (the caller skips them).
  """
  h = jnp.ones(dim) if curvature is None else jnp.asarray(curvature, jnp.float32)
  bad = jnp.zeros(steps, bool).at[jnp.asarray(list(poison), jnp.int32)].set(True)
  params = {"x": jnp.full(dim, x0, jnp.float32)}

  def step(carry, inputs):
    p, s = carry
    key, is_bad = inputs
    g = {"x": h * p["x"] + sigma * jax.random.normal(key, (dim,))}
    g = jax.tree.map(lambda x: jnp.where(is_bad, jnp.nan, x), g)
    u, s = opt.update(g, s, p)
    new = optax.apply_updates(p, jax.tree.map(lambda x: jnp.where(is_bad, 0.0, x), u))
    reads = (gradvar_optax.lr_scale(s), gradvar_optax.stationarity_drops(s),
             gradvar_optax.stationarity_test(s).step)
    return (new, s), (p, g, u, reads)

  keys = jax.random.split(jax.random.key(seed), steps)
  run = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs))
  (_, state), (ps, gs, us, reads) = run((params, opt.init(params)), (keys, bad))
  scales, drops, test_steps = (np.asarray(r) for r in reads)
  return ps, gs, us, scales, drops, test_steps, state


def drop_steps(drops):
  """The 1-based steps at which a drop happened."""
  return np.nonzero(np.diff(np.concatenate([[0], drops])))[0] + 1


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 15, 31, 32, 63, 127, 1000])
def test_t_critical_matches_scipy(dof):
  sig = np.array([0.001, 0.01, 0.05, 0.1, 0.2, 0.5], np.float32)
  got = jax.jit(jax.vmap(_batch_means.t_critical, (0, None)))(sig, dof)
  np.testing.assert_allclose(got, stats.t.ppf(1 - sig.astype(np.float64) / 2, dof),
                             rtol=2e-5)


def test_matches_the_reference_step_by_step():
  # A small bucket (capacity 48, keep 1/2) so that it both fills up and passes tests several
  # times; SGD's update is -lr * g, which the reference recomputes from the gradients.
  kw = dict(factor=0.5, test_every=7, min_samples=16, keep_fraction=0.5, significance=0.1,
            capacity=48)
  lr = 0.05
  poison = (3, 50, 51, 200, 333)
  ps, gs, us, scales, drops, tests, state = quadratic_run(
      gradvar_optax.reduce_on_stationarity(optax.sgd(lr), **kw), 600, seed=3, poison=poison)
  ref = Reference(**kw)
  last_test = None
  for t in range(600):
    before = ref.scale
    inner = [-lr * np.asarray(g, np.float64) * float(before) for g in jax.tree.leaves(
        jax.tree.map(lambda x: x[t], gs))]
    sample = reference_delta(jax.tree.leaves(jax.tree.map(lambda x: x[t], ps)), inner)
    assert scales[t] == ref.step(sample), t
    assert drops[t] == ref.drops and tests[t] == ref.test[0], t
    if t not in poison:  # the returned update is the base update times the new scale
      np.testing.assert_allclose(us["x"][t], -lr * gs["x"][t] * scales[t], rtol=1e-6)
    last_test = ref.test
  assert ref.drops >= 3 and ref.capped, "the stream should drop several times and fill the ring"
  assert int(state.skipped) == len(poison) == ref.skipped
  assert int(state.steps) == 600 - len(poison)
  got = gradvar_optax.stationarity_test(state)
  np.testing.assert_allclose([got.mean, got.lower, got.upper], last_test[1:],
                             rtol=2e-3, atol=1e-3 * abs(last_test[3] - last_test[2]))
  kept = ref.bucket[-min(len(ref.bucket), 48):]
  ring = np.roll(np.asarray(state.samples), -int(state.count))[48 - len(kept):]
  np.testing.assert_allclose(ring, kept, rtol=1e-4, atol=1e-6 * max(map(abs, kept)))


def test_noisy_quadratic_drops_after_its_transient_to_exactly_factor():
  # SGD at lr 0.01 on h = 1: E|x|^2 - S falls as 0.9801^k from 160 to the stationary
  # S = lr sigma^2 d / (2 - lr) = 0.05, which it reaches after ln(3200) / -ln(0.9801) = 401
  # steps: the transient. Tests run every 10 steps from step 40 on, 36 of them inside it.
  transient = int(np.log(160 / 0.05) / -np.log(0.99 ** 2))
  assert transient == 401
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.01), test_every=10, min_samples=16,
                                             keep_fraction=0.5)
  *_, scales, drops, tests, _ = quadratic_run(opt, 1200)
  first = drop_steps(drops)[0]
  assert transient < first < 3 * transient
  assert tests[transient] > 300  # the test ran, and failed, inside the transient
  assert np.all(scales[:first - 1] == 1.0)
  assert scales[first - 1] == np.float32(0.1)
  assert all(s == _power(d) for s, d in zip(scales, drops))


def _power(drops):
  scale = np.float32(1.0)
  for _ in range(drops):
    scale = np.float32(scale * np.float32(0.1))
  return scale


@pytest.mark.parametrize("lr,curvature", [(0.01, np.logspace(-2, 0, 10)), (0.5, np.ones(10))],
                         ids=["ill-conditioned", "fast-to-zero"])
def test_no_drop_on_a_noise_free_quadratic_under_sgd(lr, curvature):
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(lr), test_every=10, min_samples=16)
  ps, *_, scales, drops, tests, _ = quadratic_run(opt, 3000, sigma=0.0, curvature=curvature)
  sq = np.sum(np.asarray(ps["x"], np.float64) ** 2, axis=1)
  assert np.all(np.diff(sq) <= 0)  # |x|^2 never grows
  assert tests[-1] == 3000 and drops[-1] == 0 and np.all(scales == 1.0)


def test_adam_with_noise_drops_once_it_has_arrived():
  # Adam's steps are about lr per coordinate, so x reaches the noise floor after about
  # x0 / lr = 80 steps.
  opt = gradvar_optax.reduce_on_stationarity(optax.adam(0.05), test_every=10, min_samples=16,
                                             keep_fraction=0.5)
  *_, scales, drops, _, _ = quadratic_run(opt, 1000, seed=1)
  first = drop_steps(drops)[0]
  assert 80 < first < 600
  assert np.all(scales[:first - 1] == 1.0) and scales[first - 1] == np.float32(0.1)


def test_non_finite_steps_are_skipped_counted_and_change_no_decision():
  kw = dict(test_every=10, min_samples=16, keep_fraction=0.5)
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.01), **kw)
  poison = tuple(range(5, 1200, 37))
  _, gs, us, scales, drops, _, state = quadratic_run(opt, 1200, poison=poison)
  clean = np.setdiff1d(np.arange(1200), poison)
  assert int(state.skipped) == len(poison) and int(state.steps) == len(clean)
  assert np.all(np.isnan(np.asarray(us["x"])[list(poison)]))  # the base update, left to the caller
  for name in ("samples", "test_mean", "test_lower", "test_upper", "lr_scale"):
    assert np.all(np.isfinite(np.asarray(getattr(state, name)))), name
  # Replaying only the finite gradients gives the same decisions at the same finite steps.
  ref_opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.01), **kw)
  params = {"x": jnp.full(10, 4.0)}
  ref_state = ref_opt.init(params)
  update = jax.jit(ref_opt.update)
  for t in clean:
    u, ref_state = update({"x": gs["x"][t]}, ref_state, params)
    params = optax.apply_updates(params, u)
    assert float(ref_state.lr_scale) == scales[t]
  assert int(ref_state.drops) == drops[-1] >= 1


def test_update_without_params_says_so():
  opt = gradvar_optax.reduce_on_stationarity(optax.adam(1e-3))
  state = opt.init({"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="needs the params"):
    opt.update({"w": jnp.ones(2)}, state)


@pytest.mark.parametrize("kw,name", [
    (dict(factor=1.0), "factor"), (dict(factor=0.0), "factor"),
    (dict(test_every=0), "test_every"), (dict(test_every=2.5), "test_every"),
    (dict(min_samples=8), "min_samples"), (dict(min_samples=5000), "min_samples"),
    (dict(keep_fraction=0.0), "keep_fraction"), (dict(keep_fraction=1.5), "keep_fraction"),
    (dict(significance=1.0), "significance"), (dict(warmup_steps=-1), "warmup_steps"),
    (dict(min_scale=2.0), "min_scale"), (dict(capacity=8), "capacity"),
    (dict(capacity=100.0), "capacity"),
])
def test_bad_arguments_raise_naming_them(kw, name):
  with pytest.raises(ValueError, match=name):
    gradvar_optax.reduce_on_stationarity(optax.sgd(1.0), **kw)


def test_min_scale_floors_the_scale_and_warmup_delays_the_tests():
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.01), test_every=10, min_samples=16,
                                             keep_fraction=0.5, min_scale=0.05,
                                             warmup_steps=1000)
  *_, scales, drops, tests, _ = quadratic_run(opt, 1500)
  assert tests[998] == 0 and drop_steps(drops)[0] >= 1000
  assert drops[-1] >= 2 and scales[-1] == np.float32(0.05)


def test_docstring_examples():
  for module in (_stationarity, _stationarity_readout):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, module.__name__


def test_readme_example_runs_and_drops_after_the_transient(capsys):
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
  start = readme.index("\n### A statistical drop: `reduce_on_stationarity`\n")
  block = re.compile(r"^```python\n(.*?)^```$", re.M | re.S).search(readme, start).group(1)
  namespace = {"__name__": "readme"}
  exec(compile(block, "README.md: reduce_on_stationarity", "exec"), namespace)
  drops = int(gradvar_optax.stationarity_drops(namespace["state"]))
  scales = np.asarray(namespace["scales"])
  first = int(np.argmax(scales < 1)) + 1
  assert drops >= 1 and 80 < first and scales[first - 1] == np.float32(0.1)
  assert f"drops: {drops} first at step {first}" in capsys.readouterr().out


def test_readouts_find_one_state_through_nesting_and_refuse_none_or_two():
  params = {"w": jnp.ones(2)}
  ros = lambda: gradvar_optax.reduce_on_stationarity(optax.adam(1e-3))
  nested = optax.MultiSteps(optax.chain(optax.clip(1.0), ros()), 2).init(params)
  assert float(gradvar_optax.lr_scale(nested)) == 1.0
  assert int(gradvar_optax.stationarity_drops(nested)) == 0
  assert int(gradvar_optax.stationarity_test(nested).step) == 0
  with pytest.raises(ValueError, match="reduce_on_stationarity"):
    gradvar_optax.stationarity_drops(gradvar_optax.gradvar(optax.adam(1e-3)).init(params))
  with pytest.raises(ValueError, match="StationarityState"):
    gradvar_optax.stationarity_drops(optax.chain(ros(), ros()).init(params))

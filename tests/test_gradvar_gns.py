"""gns: the noise-scale estimator, its averages and rule, its data paths, faults and readouts."""

import dataclasses
import doctest
import functools
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import gns_reference
from gns_reference import Reference
from gns_reference import group_stream
from gns_reference import mean_and_q
from hypothesis import Phase
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import stacks

import gradvar_optax
from gradvar_optax import _gns

N_DEV = 8


def _tree(leaves):
  return {"a": jnp.asarray(leaves[0]), "b": {"c": jnp.asarray(leaves[1])}}


def _params():
  return {"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros(5)}}


def _replay(opt, stream, jit=True, poison=None):
  """Feeds per-step groups to `opt` as mean gradient + q; returns the (updates, state) pairs."""
  params = _params()
  state = opt.init(params)
  update = jax.jit(opt.update) if jit else opt.update
  out = []
  for t, groups in enumerate(stream):
    mean, q = mean_and_q(groups)
    if poison is not None:
      mean, q = poison(t, mean, q)
    updates, state = update(_tree(mean), state, params, group_sq_norm=q,
                            num_groups=len(groups))
    out.append((updates, state))
  return out, update


def test_docstring_examples():
  result = doctest.testmod(_gns, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0


def test_closed_form_estimates_are_unbiased():
  """g_i = G + xi_i, xi_i ~ N(0, sigma^2 I_d): E[S] = d sigma^2 and E[G^2] = |G|^2."""
  draws, n, d, sigma = 2000, 4, 50, 0.7
  rng = np.random.default_rng(0)
  true = rng.standard_normal(d).astype(np.float32)
  groups = true + sigma * rng.standard_normal((draws, n, d)).astype(np.float32)
  mean = groups.mean(1)
  q = np.mean(np.sum(np.square(groups), -1), 1)
  # decay=0: each draw's state holds that step's own estimates.
  opt = gradvar_optax.gns(optax.sgd(1.0), decay=0.0)
  state = opt.init({"w": jnp.zeros(d)})
  update = jax.vmap(lambda g, q: opt.update({"w": g}, state, None, group_sq_norm=q,
                                            num_groups=n)[1])
  states = update(jnp.asarray(mean), jnp.asarray(q))
  assert np.all(np.asarray(states.count) == 1)
  signal = np.asarray(states.signal_ema, np.float64)
  noise = n * (np.asarray(states.sq_norm_ema, np.float64) - signal)  # S = N (|mean|^2 - G^2)
  for values, expected in ((noise, d * sigma**2), (signal, float(np.sum(true.astype(
      np.float64) ** 2)))):
    se = values.std(ddof=1) / np.sqrt(draws)
    assert abs(values.mean() - expected) < 4 * se, (values.mean(), expected, se)
    # The test can fail: a 20% bias would lie far outside 4 standard errors.
    assert 4 * se < 0.2 * expected
  # The library's S and G^2 are the formulas' (float32 against float64).
  s_ref, g2_ref = zip(*[gns_reference.estimates([[x] for x in groups[i]])[:2] for i in range(20)])
  np.testing.assert_allclose(noise[:20], s_ref, rtol=1e-4)
  np.testing.assert_allclose(signal[:20], g2_ref, rtol=1e-4)


def test_no_noise_gives_zero_noise_and_scale_one():
  rng = np.random.default_rng(1)
  stream = []
  for _ in range(30):
    g = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    stream.append([g] * 4)  # four identical groups: sigma = 0
  out, _ = _replay(gradvar_optax.gns(optax.adam(1e-2), warmup_steps=10, decay=0.9), stream)
  for _, state in out:
    assert float(gradvar_optax.noise_to_signal(state)) < 1e-6
    np.testing.assert_allclose(float(state.lr_scale), 1.0, rtol=1e-6)
    # S = N (|mean|^2 - G^2), relative to the gradients' size.
    assert abs(float(state.sq_norm_ema - state.signal_ema)) < 1e-6 * float(state.sq_norm_ema)
  assert int(out[-1][1].count) == 30 and float(out[-1][1].signal_fraction_ref) > 0.999


def test_zero_true_gradient():
  """G = 0: phi falls to about 0 and r becomes very large; phi_ref = 0 keeps the scale at 1."""
  rng = np.random.default_rng(2)
  # Groups whose mean is exactly zero: the smoothed G^2 is negative, phi is 0, so is phi_ref.
  symmetric = []
  for _ in range(20):
    a = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    symmetric.append([a, [-x for x in a]])
  out, _ = _replay(gradvar_optax.gns(optax.adam(1e-2), warmup_steps=5, min_scale=0.1), symmetric)
  for _, state in out:
    assert float(state.lr_scale) == 1.0
    np.testing.assert_allclose(float(gradvar_optax.noise_to_signal(state)),
                               1 / gns_reference.PHI_FLOOR, rtol=1e-6)
  assert float(out[-1][1].signal_fraction_ref) == 0.0 and int(out[-1][1].count) == 20
  # Pure noise in general: r far above 1, finite, the scale within its bounds.
  noise = [[[rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,))]
            for _ in range(4)] for _ in range(200)]
  out, _ = _replay(gradvar_optax.gns(optax.adam(1e-2), warmup_steps=20, min_scale=0.1), noise)
  r = [float(gradvar_optax.noise_to_signal(s)) for _, s in out]
  assert np.all(np.isfinite(r)) and min(r[50:]) > 3 and max(r) <= 1 / gns_reference.PHI_FLOOR
  scales = [float(s.lr_scale) for _, s in out]
  assert all(0.1 <= x <= 1.0 for x in scales)


@pytest.mark.parametrize("c", [8.0, 3.7])
def test_loss_times_c_leaves_r_and_scale_unchanged(c):
  stream = group_stream(60, seed=4)
  scaled = [[[np.float32(c) * x for x in g] for g in step] for step in stream]
  opt = gradvar_optax.gns(optax.adam(1e-2), warmup_steps=10, decay=0.9)
  base, _ = _replay(opt, stream)
  times_c, _ = _replay(opt, scaled)
  r = [float(s.noise_to_signal) for _, s in base]
  r_c = [float(s.noise_to_signal) for _, s in times_c]
  scale = [float(s.lr_scale) for _, s in base]
  scale_c = [float(s.lr_scale) for _, s in times_c]
  assert min(scale) < 0.9, "the stream should move the scale"
  if c == 8.0:  # a power of two scales every float exactly
    assert r == r_c and scale == scale_c
  else:
    np.testing.assert_allclose(r_c, r, rtol=1e-5)
    np.testing.assert_allclose(scale_c, scale, rtol=1e-5)


def _poison(t, mean, q):
  """Every 7th step: a non-finite q or mean gradient, in turn NaN q, Inf q, NaN, Inf."""
  if t % 7 != 6:
    return mean, q
  kind = (t // 7) % 4
  if kind < 2:
    return mean, np.float32(np.nan if kind == 0 else np.inf)
  mean = [x.copy() for x in mean]
  mean[1][2] = np.nan if kind == 2 else np.inf
  return mean, q


@pytest.mark.parametrize("decay,power,max_scale", [(0.95, 0.5, 1.0), (0.8, 1.0, 2.0)])
def test_matches_numpy_reference_step_by_step(decay, power, max_scale):
  stream = group_stream(300, groups=4, seed=5)
  kw = dict(decay=decay, power=power, warmup_steps=50, min_scale=0.3, max_scale=max_scale)
  out, update = _replay(gradvar_optax.gns(optax.sgd(1.0), **kw), stream, poison=_poison)
  ref = Reference(**kw)
  moved_down = 0
  for t, (groups, (updates, state)) in enumerate(zip(stream, out)):
    mean, q = _poison(t, *mean_and_q(groups))
    expected = ref.step(gns_reference.sq_norm(mean), float(q), len(groups))
    np.testing.assert_allclose(float(state.lr_scale), expected, rtol=2e-5, err_msg=f"step {t}")
    np.testing.assert_allclose(float(state.noise_to_signal), ref.noise_to_signal, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(float(state.signal_fraction_ref), ref.phi_ref, rtol=2e-5)
    bias = 1 - decay ** int(state.count)  # the averages' common weight
    np.testing.assert_allclose(float(state.signal_ema) / bias, ref.signal, rtol=1e-4)
    np.testing.assert_allclose(float(state.sq_norm_ema) / bias, ref.sq, rtol=1e-5)
    assert int(state.count) == ref.count and int(state.skipped) == ref.skipped
    if t < 49:
      assert float(state.lr_scale) == 1.0  # the warmup
    # The step's updates are SGD's on the mean gradient times this step's scale.
    np.testing.assert_allclose(np.asarray(updates["b"]["c"]),
                               -float(state.lr_scale) * np.asarray(mean[1]), rtol=1e-6)
    moved_down += expected < 0.9
  assert ref.skipped == len(range(6, 300, 7))
  assert moved_down > 100  # the noise rose over the stream: the scale fell and stayed down
  assert update._cache_size() == 1


def test_pmap_axis_name_equals_group_sq_norm_path():
  """8 replicas each hand in their own gradient; 4 replicas x 2 microbatches do the same."""
  assert jax.device_count() >= N_DEV
  steps = 30
  stream = group_stream(steps, groups=N_DEV, seed=6)
  kw = dict(warmup_steps=10, decay=0.8, min_scale=0.1)
  base = optax.adam(0.05)
  expected, _ = _replay(gradvar_optax.gns(base, **kw), stream)
  replicate = lambda t, n: jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), t)

  opt = gradvar_optax.gns(base, axis_name="batch", **kw)
  params = replicate(_params(), N_DEV)
  state = replicate(opt.init(_params()), N_DEV)
  step = jax.pmap(lambda g, s, p: opt.update(g, s, p), axis_name="batch")
  # The same 8 groups as 4 replicas of 2 microbatches, each replica passing its own mean and q.
  params4 = replicate(_params(), 4)
  state4 = replicate(opt.init(_params()), 4)
  step4 = jax.pmap(lambda g, s, p, q: opt.update(g, s, p, group_sq_norm=q, num_groups=2),
                   axis_name="batch", devices=jax.devices()[:4])
  for t, groups in enumerate(stream):
    grads = _tree([np.stack([g[k] for g in groups]) for k in range(2)])
    updates, state = step(grads, state, params)
    halves = [mean_and_q(groups[2 * i:2 * i + 2]) for i in range(4)]
    updates4, state4 = step4(_tree([np.stack([m[k] for m, _ in halves]) for k in range(2)]),
                             state4, params4, jnp.asarray([q for _, q in halves]))
    want_updates, want = expected[t]
    for got_updates, got in ((updates, state), (updates4, state4)):
      for name in ("lr_scale", "noise_to_signal", "signal_ema", "sq_norm_ema", "count"):
        values = np.asarray(getattr(got, name))
        # Every replica holds the same statistics, and they are the group path's.
        np.testing.assert_array_equal(values, np.broadcast_to(values[0], values.shape), name)
        # r = (1 - phi) / phi: near phi = 1 its error is absolute, phi's.
        np.testing.assert_allclose(values[0], np.asarray(getattr(want, name)), rtol=1e-5,
                                   atol=2e-6, err_msg=f"{name} at step {t}")
      # The base optimizer saw the averaged gradient: the same Adam step on every replica.
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, np.broadcast_to(b, a.shape),
                                                           rtol=1e-4, atol=1e-7),
                   got_updates, want_updates)
  scale = gradvar_optax.lr_scale(state)[0]  # the readout gives one value per replica
  assert float(scale) < 0.95  # the scale moved
  np.testing.assert_allclose(float(scale), float(expected[-1][1].lr_scale), rtol=1e-5)


def test_non_finite_inputs_are_skipped():
  opt = gradvar_optax.gns(optax.sgd(1.0), warmup_steps=2)
  params = _params()
  update = jax.jit(opt.update)
  stream = group_stream(3, seed=7)
  state = opt.init(params)
  for groups in stream:
    mean, q = mean_and_q(groups)
    _, state = update(_tree(mean), state, params, group_sq_norm=q, num_groups=np.int32(4))
  mean, q = mean_and_q(stream[0])
  bad_mean = [mean[0].copy(), mean[1].copy()]
  bad_mean[0][1, 1] = np.nan
  huge = [np.full_like(x, 3e38) for x in mean]  # |mean|^2 overflows float32
  cases = [(mean, np.nan, 4), (mean, np.inf, 4), (mean, -np.inf, 4), (bad_mean, q, 4),
           (huge, q, 4), (mean, q, 0), (mean, q, -3)]  # a traced num_groups below 1, too
  for m, bad_q, n in cases:
    updates, after = update(_tree(m), state, params, group_sq_norm=np.float32(bad_q),
                            num_groups=np.int32(n))
    assert int(after.skipped) == int(state.skipped) + 1
    jax.tree.map(np.testing.assert_array_equal, after._replace(skipped=state.skipped), state)
    # The base optimizer still received the gradients as they were.
    np.testing.assert_array_equal(np.asarray(updates["a"]), -float(state.lr_scale) * m[0])
  assert update._cache_size() == 1


def test_a_step_with_one_group_holds_and_counts_nowhere():
  """A traced num_groups of 1 (groups on every k-th step only): the base steps, gns holds."""
  opt = gradvar_optax.gns(optax.sgd(1.0), warmup_steps=2)
  params = _params()
  stream = group_stream(4, seed=3)
  out, update = _replay(opt, stream[:3])
  state = out[-1][1]
  assert float(state.lr_scale) < 1.0 and int(state.count) == 3  # not vacuous: it moved
  mean, _ = mean_and_q(stream[3])
  sq = np.float32(sum(np.sum(np.square(x.astype(np.float64))) for x in mean))
  updates, after = update(_tree(mean), state, params, group_sq_norm=sq, num_groups=np.int32(1))
  jax.tree.map(np.testing.assert_array_equal, after._replace(inner_state=state.inner_state),
               state)
  np.testing.assert_allclose(np.asarray(updates["a"]), -float(state.lr_scale) * mean[0],
                             rtol=1e-6)
  # The next grouped step goes on as if the held one had not been there.
  mean, q = mean_and_q(stream[3])
  _, want = update(_tree(mean), state, params, group_sq_norm=q, num_groups=np.int32(4))
  _, got = update(_tree(mean), after, params, group_sq_norm=q, num_groups=np.int32(4))
  jax.tree.map(np.testing.assert_array_equal, got._replace(inner_state=want.inner_state), want)
  with pytest.raises(ValueError, match="a traced 1 marks a step without groups"):
    opt.update(_tree(mean), state, params, group_sq_norm=sq, num_groups=1)


def test_orbax_round_trip_resumes_exactly(tmp_path):
  stream = group_stream(40, seed=8)
  opt = gradvar_optax.gns(optax.adamw(1e-2, weight_decay=1e-3), warmup_steps=10, decay=0.9)
  params0 = _params()

  @jax.jit
  def step(params, state, grads, q):
    updates, state = opt.update(grads, state, params, group_sq_norm=q, num_groups=4)
    return optax.apply_updates(params, updates), state

  def run(state, params, groups_seq):
    for groups in groups_seq:
      mean, q = mean_and_q(groups)
      params, state = step(params, state, _tree(mean), q)
    return params, state

  uninterrupted = run(opt.init(params0), params0, stream)
  params, state = run(opt.init(params0), params0, stream[:17])
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(17, args=ocp.args.StandardSave({"params": params, "opt_state": state}))
    mngr.wait_until_finished()
  abstract = jax.eval_shape(lambda: {"params": params0, "opt_state": opt.init(params0)})
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))
  assert isinstance(restored["opt_state"], gradvar_optax.GNSState)
  resumed = run(restored["opt_state"], restored["params"], stream[17:])
  assert float(uninterrupted[1].lr_scale) < 1.0, "the stream should move the scale"
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)


def test_a_step_that_donates_the_fresh_state_runs():
  """Every field of a fresh state is its own buffer, so jit(..., donate_argnums) accepts it."""
  opt = gradvar_optax.gns(optax.adam(1e-2))
  params = _params()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, grads, q):
    updates, state = opt.update(grads, state, params, group_sq_norm=q, num_groups=4)
    return optax.apply_updates(params, updates), state

  mean, q = mean_and_q(group_stream(1, seed=14)[0])
  _, state = step(params, opt.init(params), _tree(mean), q)
  assert int(state.count) == 1

@pytest.mark.parametrize("kwargs,name", [
    (dict(decay=1.0), "decay"), (dict(decay=-0.1), "decay"),
    (dict(power=0.0), "power"), (dict(power=float("inf")), "power"),
    (dict(warmup_steps=0), "warmup_steps"), (dict(warmup_steps=2.5), "warmup_steps"),
    (dict(warmup_steps=True), "warmup_steps"),
    (dict(min_scale=0.0), "min_scale"), (dict(min_scale=1.5), "min_scale"),
    (dict(max_scale=0.5), "max_scale"), (dict(max_scale=float("inf")), "max_scale"),
])
def test_bad_arguments_name_themselves(kwargs, name):
  with pytest.raises(ValueError, match=name):
    gradvar_optax.gns(optax.adam(1e-3), **kwargs)


def test_update_without_groups_says_how_to_supply_them():
  opt = gradvar_optax.gns(optax.adam(1e-3))
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  with pytest.raises(ValueError, match=r"group_sq_norm=q, num_groups=N.*axis_name"):
    opt.update(params, state, params)
  with pytest.raises(ValueError, match="num_groups is missing"):
    opt.update(params, state, params, group_sq_norm=1.0)
  with pytest.raises(ValueError, match="group_sq_norm is missing"):
    opt.update(params, state, params, num_groups=4)
  with pytest.raises(ValueError, match="num_groups must be >= 2"):
    opt.update(params, state, params, group_sq_norm=1.0, num_groups=1)


def test_readouts_through_nesting_and_replication():
  stream = group_stream(12, seed=9)
  inner = gradvar_optax.gns(optax.adam(1e-2), warmup_steps=3, decay=0.5)
  nested = optax.chain(optax.identity(), optax.apply_if_finite(
      optax.inject_hyperparams(gradvar_optax.gns)(optax.adam(1e-2), warmup_steps=3, decay=0.5),
      max_consecutive_errors=3))
  plain, _ = _replay(inner, stream)
  deep, update = _replay(nested, stream)
  assert update._cache_size() == 1
  for (_, a), (_, b) in zip(plain, deep):
    for read in (gradvar_optax.lr_scale, gradvar_optax.noise_to_signal):
      got = read(b)
      assert got.shape == () and got.dtype == jnp.float32
      np.testing.assert_allclose(float(got), float(read(a)), rtol=1e-6)
  final = plain[-1][1]
  assert float(final.lr_scale) != 1.0
  np.testing.assert_allclose(float(gradvar_optax.noise_scale(deep[-1][1], 256)),
                             256 * float(final.noise_to_signal), rtol=1e-6)
  # A pmap-replicated state reads one value per replica (never silently the first); inside
  # jit, too.
  replicated = jax.tree.map(lambda x: jnp.broadcast_to(x, (4,) + x.shape), deep[-1][1])
  np.testing.assert_array_equal(gradvar_optax.noise_to_signal(replicated),
                                [float(gradvar_optax.noise_to_signal(deep[-1][1]))] * 4)
  np.testing.assert_array_equal(jax.jit(gradvar_optax.lr_scale)(replicated),
                                [float(final.lr_scale)] * 4)
  # Every numeric argument is injectable; none needs to be static.
  hyper = deep[-1][1][1].inner_state.hyperparams
  assert set(hyper) >= {"decay", "power", "warmup_steps", "min_scale", "max_scale"}


def test_readouts_refuse_ambiguous_or_missing_states():
  params = {"enc": jnp.ones(3), "head": jnp.ones(2)}
  labels = {"enc": "a", "head": "b"}
  two = optax.multi_transform({"a": gradvar_optax.gns(optax.adam(1e-3)),
                               "b": gradvar_optax.gns(optax.sgd(1e-2))}, labels)
  with pytest.raises(ValueError, match="2 GNSStates"):
    gradvar_optax.noise_to_signal(two.init(params))
  mixed = optax.multi_transform({"a": gradvar_optax.gns(optax.adam(1e-3)),
                                 "b": gradvar_optax.gradvar(optax.sgd(1e-2))}, labels)
  with pytest.raises(ValueError, match="2 states with a 'lr_scale'"):
    gradvar_optax.lr_scale(mixed.init(params))
  # Each readout finds its own kind in the mixed state.
  assert float(gradvar_optax.noise_to_signal(mixed.init(params))) == 0.0
  assert float(gradvar_optax.variability(mixed.init(params))) == 0.0
  with pytest.raises(ValueError, match="No GNSState"):
    gradvar_optax.noise_scale(gradvar_optax.gradvar(optax.adam(1e-3)).init(params), 64)
  with pytest.raises(ValueError, match="No GradVarState or GNSState"):
    gradvar_optax.lr_scale(optax.adam(1e-3).init(params))


def test_multisteps_inside_gns_sees_every_mini_step():
  k = 3
  stream = group_stream(30, seed=10)
  kw = dict(warmup_steps=6, decay=0.8)
  out, _ = _replay(gradvar_optax.gns(optax.MultiSteps(optax.sgd(1.0), every_k_schedule=k), **kw),
                   stream)
  ref = Reference(**kw)
  for t, (groups, (updates, state)) in enumerate(zip(stream, out)):
    np.testing.assert_allclose(float(state.lr_scale), ref.step_groups(groups), rtol=2e-5)
    if t % k == k - 1:  # the accumulated mean of the k mini-steps, times this step's scale
      acc = np.mean([mean_and_q(stream[s])[0][1] for s in range(t - k + 1, t + 1)], 0)
      np.testing.assert_allclose(np.asarray(updates["b"]["c"]), -ref.scale * acc, rtol=1e-5)
    else:
      assert not np.any(np.asarray(updates["b"]["c"]))
  assert int(out[-1][1].count) == 30 and ref.scale < 1.0


# One fixed tree and one optimizer: every example reuses the same compiled update.
_PROP_OPT = gradvar_optax.gns(optax.adam(1e-2), warmup_steps=3, decay=0.7, min_scale=0.2,
                              max_scale=2.0)
_PROP_UPDATE = jax.jit(_PROP_OPT.update)
_PROP_PARAMS = {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4, jnp.bfloat16)}
_PROP_STATE = _PROP_OPT.init(_PROP_PARAMS)
_KINDS = ("normal", "normal", "nan_q", "inf_q", "nan_grad", "inf_grad", "zero", "tiny", "huge",
          "mean_zero")


_STREAMS = dict(kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=12),
                seed=st.integers(0, 2**16), groups=st.integers(2, 6))


@settings(max_examples=150, deadline=None, phases=(Phase.explicit, Phase.generate))
@given(**_STREAMS)
def test_any_stream_keeps_the_scale_finite_and_bounded(kinds, seed, groups):
  _check_stream(kinds, seed, groups)


@pytest.mark.slow  # 1000 streams: 15-40 s on 2 busy cores
@settings(max_examples=1000, deadline=None, phases=(Phase.explicit, Phase.generate))
@given(**_STREAMS)
def test_a_thousand_streams_keep_the_scale_finite_and_bounded(kinds, seed, groups):
  _check_stream(kinds, seed, groups)


def _check_stream(kinds, seed, groups):
  rng = np.random.default_rng(seed)
  state = _PROP_STATE
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  poisoned = 0
  for kind in kinds:
    size = {"zero": 0.0, "tiny": 1e-30, "huge": 1e30}.get(kind, rng.uniform(0.01, 100))
    g = rng.standard_normal((groups, 10)) * size + rng.standard_normal(10) * size
    if kind == "mean_zero":
      g = g - g.mean(0)
    mean = g.mean(0)
    q = np.mean(np.sum(np.square(g), -1))
    if kind in ("nan_q", "inf_q"):
      q, poisoned = (np.nan if kind == "nan_q" else np.inf), poisoned + 1
    if kind in ("nan_grad", "inf_grad"):
      mean[3], poisoned = (np.nan if kind == "nan_grad" else np.inf), poisoned + 1
    grads = {"a": jnp.asarray(mean[:6].reshape(2, 3), jnp.float32),
             "b": jnp.asarray(mean[6:], jnp.bfloat16)}
    with np.errstate(over="ignore"):  # a "huge" q overflows float32 to inf, on purpose
      q = np.float32(q)
    updates, state = _PROP_UPDATE(grads, state, _PROP_PARAMS, group_sq_norm=q,
                                  num_groups=groups)
    scale = float(state.lr_scale)
    assert np.isfinite(scale) and 0.2 <= scale <= 2.0
    assert updates["b"].dtype == jnp.bfloat16
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
  for name in ("signal_ema", "sq_norm_ema", "noise_to_signal",
               "signal_fraction_ref"):
    assert np.isfinite(float(getattr(state, name))), name
  assert float(state.noise_to_signal) >= 0.0
  assert 0.0 <= float(state.signal_fraction_ref) <= 1.0
  # Every poisoned step was skipped (and the overflowing ones, too); every other step counted.
  assert int(state.count) + int(state.skipped) == len(kinds)
  assert int(state.skipped) >= poisoned
  assert _PROP_UPDATE._cache_size() == 1


def _regression(seed, batch=32, dim=6):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, dim)).astype(np.float32)
  y = (x @ rng.standard_normal(dim) + 0.5 * rng.standard_normal(batch)).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def _mse(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def test_microbatch_grad_is_the_plain_gradient_and_its_q():
  params = {"w": jnp.asarray(np.linspace(-1, 1, 6), jnp.float32), "b": jnp.zeros(())}
  x, y = _regression(11)
  grads, q = jax.jit(gradvar_optax.microbatch_grad(_mse, 4))(params, x, y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grads, jax.grad(_mse)(params, x, y))
  per_group = [jax.grad(_mse)(params, x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
  np.testing.assert_allclose(float(q), np.mean([gns_reference.sq_norm(jax.tree.leaves(g))
                                                for g in per_group]), rtol=1e-5)
  assert q.dtype == jnp.float32 and q > gns_reference.sq_norm(jax.tree.leaves(grads))
  # With aux: it comes back stacked over the microbatches.
  aux_fn = gradvar_optax.microbatch_grad(lambda p, x, y: (_mse(p, x, y), x.sum()), 4,
                                         has_aux=True)
  (grads_aux, q_aux), aux = aux_fn(params, x, y)
  assert float(q_aux) == pytest.approx(float(q), rel=1e-6) and aux.shape == (4,)
  np.testing.assert_allclose(np.asarray(aux), np.asarray(x).reshape(4, 8, 6).sum((1, 2)),
                             rtol=1e-5)


def test_microbatch_axis_keeps_batch_statistics_over_the_whole_batch():
  """A BatchNorm-like centring over the microbatch axis: the mean gradient is the plain one."""
  params = {"w": jnp.asarray(np.linspace(-1, 1, 6), jnp.float32), "b": jnp.zeros(())}
  x, y = _regression(12)

  def centred(params, x, y, axis_name=None):
    pred = x @ params["w"]
    mean = jnp.mean(pred)
    if axis_name is not None:
      mean = jax.lax.pmean(mean, axis_name)
    return jnp.mean((pred - mean + params["b"] - y) ** 2)

  plain = jax.grad(centred)(params, x, y)
  grads, _ = gradvar_optax.microbatch_grad(functools.partial(centred, axis_name="micro"), 4,
                                           axis_name="micro")(params, x, y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, plain)
  # Without the axis each microbatch centres on its own mean: another model, another gradient.
  local, _ = gradvar_optax.microbatch_grad(centred, 4)(params, x, y)
  assert not np.allclose(local["w"], plain["w"], rtol=1e-3)


def _numpy_variables(model, *inputs, seed=0):
  """Variables of `model`'s exact structure drawn with NumPy: no XLA compilation of an init.

  The BatchNorm scales are random too, so that the last BatchNorm of each block (zero at init)
  passes a gradient.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), *inputs)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name in ("kernel", "embedding"):
      value = rng.normal(0.0, np.sqrt(1.0 / max(np.prod(leaf.shape[:-1]), 1)), leaf.shape)
    else:  # biases, running means
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _assert_close_to_plain(grads, plain):
  """Every leaf within float tolerance of the plain gradient, relative to the leaf's size."""
  def close(path, a, b):
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5 * np.abs(b).max() + 1e-9,
                               err_msg=jax.tree_util.keystr(path))
  jax.tree_util.tree_map_with_path(close, grads, plain)


@pytest.mark.slow  # compiles ResNet tiny 4 times: 30 s to minutes on 2 busy cores
def test_microbatch_grad_on_resnet_tiny_keeps_batchnorm_over_the_whole_batch():
  """4 microbatches on one device, and 2 devices x 2 microbatches, equal the plain batch of 8."""
  from models import resnet  # pylint: disable=g-import-not-at-top

  cfg = resnet.PRESETS["tiny"]
  variables = _numpy_variables(resnet.ResNet(cfg, 10), resnet.dummy_input(cfg))
  params, stats = variables["params"], variables["batch_stats"]
  # A draw whose BatchNorms are well conditioned. The earlier draw (seed 20) left a channel of
  # stage1_block1's bn1 with a batch variance near zero, where float32 rounding decides the
  # gradient: on an AMD family 25 model 17 its bias gradient moved 8% between the plain and the
  # microbatched computation (and between float32 and float64), passing only on other CPUs. Of 8
  # draws tried there (variables of seeds 0-3 x images of seeds 20-21) only that one was ill
  # conditioned; the others, this one included, meet every tolerance below about 10x over.
  rng = np.random.default_rng(21)
  image = rng.standard_normal((8, cfg.image_size, cfg.image_size, cfg.in_channels),
                              dtype=np.float32)
  label = rng.integers(0, 10, 8).astype(np.int32)

  def loss_of(axis_name):
    model = resnet.ResNet(dataclasses.replace(cfg, axis_name=axis_name), 10)

    def loss(params, image, label):
      logits, new = model.apply({"params": params, "batch_stats": stats}, image, train=True,
                                mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
      return loss, new["batch_stats"]
    return loss

  (_, plain_stats), plain = jax.jit(jax.value_and_grad(loss_of(None), has_aux=True))(
      params, image, label)
  micro = gradvar_optax.microbatch_grad(loss_of("micro"), 4, has_aux=True, axis_name="micro")
  (grads, q), micro_stats = jax.jit(micro)(params, image, label)
  _assert_close_to_plain(grads, plain)
  # Every microbatch updates the running averages with the whole batch's statistics.
  _assert_close_to_plain(micro_stats, jax.tree.map(lambda x: np.broadcast_to(x, (4,) + x.shape),
                                                   plain_stats))
  assert float(q) > gns_reference.sq_norm(jax.tree.leaves(grads))
  # With a device axis too: BatchNorm's axis is the tuple (device axis, microbatch axis).
  both = gradvar_optax.microbatch_grad(loss_of(("batch", "micro")), 2, has_aux=True,
                                       axis_name="micro")

  plain_replica = jax.grad(loss_of("batch"), has_aux=True)

  def replica(params, image, label):
    (grads, q), _ = both(params, image, label)
    return jax.lax.pmean((grads, q, plain_replica(params, image, label)[0]), "batch")

  # Against the plain step on the same 2 devices, whose own gradient differs from the 1-device
  # one in float32 rounding (a near-constant channel can make that large; see the draw above).
  grads2, q2, plain2 = jax.pmap(replica, axis_name="batch", in_axes=(None, 0, 0),
                                devices=jax.devices()[:2])(
      params, image.reshape((2, 4) + image.shape[1:]), label.reshape(2, 4))
  _assert_close_to_plain(jax.tree.map(lambda x: x[0], grads2), jax.tree.map(lambda x: x[0], plain2))
  np.testing.assert_allclose(np.asarray(q2), float(q), rtol=1e-4)  # the same 4 groups
  # Without the axis, each microbatch normalises with its own statistics: another gradient.
  local, _ = jax.jit(gradvar_optax.microbatch_grad(loss_of(None), 4, has_aux=True))(
      params, image, label)
  assert not np.allclose(local[0]["head"]["kernel"], plain["head"]["kernel"], rtol=1e-2)


@pytest.mark.slow  # about 40 s on 2 busy cores
def test_microbatch_grad_on_bert_tiny_without_dropout_is_the_plain_gradient():
  from models import bert  # pylint: disable=g-import-not-at-top

  # A smaller vocabulary than the preset's 30522 only shrinks the embedding table.
  cfg = dataclasses.replace(bert.PRESETS["tiny"], hidden_dropout=0.0, attention_dropout=0.0,
                            vocab_size=1000)
  model = bert.BertClassifier(cfg, num_classes=3)
  rng = np.random.default_rng(21)
  batch, length = 8, 16
  ids = rng.integers(0, cfg.vocab_size, (batch, length)).astype(np.int32)
  lengths = rng.integers(4, length + 1, batch)
  mask = (np.arange(length) < lengths[:, None]).astype(np.int32)  # padded examples, too
  types = (np.arange(length) >= lengths[:, None] // 2).astype(np.int32)
  label = rng.integers(0, 3, batch).astype(np.int32)
  params = _numpy_variables(model, ids[:1], mask[:1], types[:1])["params"]
  key = jax.random.key(22)

  def loss(params, ids, mask, types, label, axis_name=None):
    # Microbatch i draws its dropout key as replica i does; with dropout off it is unused.
    step_key = key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    logits = model.apply({"params": params}, ids, mask, types, train=True,
                         rngs={"dropout": step_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()

  plain = jax.jit(jax.grad(loss))(params, ids, mask, types, label)
  grads, q = jax.jit(gradvar_optax.microbatch_grad(
      functools.partial(loss, axis_name="micro"), 4, axis_name="micro"))(
          params, ids, mask, types, label)
  _assert_close_to_plain(grads, plain)
  assert float(q) > gns_reference.sq_norm(jax.tree.leaves(grads))


def test_microbatch_grad_bad_arguments():
  for bad in (1, 0, 2.0, True):
    with pytest.raises(ValueError, match="num_microbatches"):
      gradvar_optax.microbatch_grad(_mse, bad)
  x, y = _regression(13, batch=10)
  with pytest.raises(ValueError, match=r"\[0\].*\(10, 6\).*num_microbatches=4"):
    gradvar_optax.microbatch_grad(_mse, 4)({"w": jnp.zeros(6), "b": jnp.zeros(())}, x, y)


def test_microbatch_path_equals_pmap_axis_name_path():
  """8 microbatches on one device and 8 replicas with axis_name give the same numbers."""
  kw = dict(warmup_steps=4, decay=0.7, min_scale=0.1)
  params0 = {"w": jnp.zeros(6), "b": jnp.zeros(())}
  one = gradvar_optax.gns(optax.adam(0.1), **kw)
  grad_fn = gradvar_optax.microbatch_grad(_mse, N_DEV)

  @jax.jit
  def step_one(params, state, x, y):
    grads, q = grad_fn(params, x, y)
    updates, state = one.update(grads, state, params, group_sq_norm=q, num_groups=N_DEV)
    return optax.apply_updates(params, updates), state

  many = gradvar_optax.gns(optax.adam(0.1), axis_name="batch", **kw)

  def step_replica(params, state, x, y):
    updates, state = many.update(jax.grad(_mse)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  step_many = jax.pmap(step_replica, axis_name="batch")
  replicate = lambda t: jax.tree.map(lambda v: jnp.broadcast_to(v, (N_DEV,) + v.shape), t)
  p1, s1 = params0, one.init(params0)
  pm, sm = replicate(params0), replicate(many.init(params0))
  scales = []
  for t in range(15):
    x, y = _regression(100 + t, batch=64)
    p1, s1 = step_one(p1, s1, x, y)
    pm, sm = step_many(pm, sm, x.reshape(N_DEV, 8, 6), y.reshape(N_DEV, 8))
    for name in ("lr_scale", "noise_to_signal", "signal_ema", "sq_norm_ema"):
      np.testing.assert_allclose(np.asarray(getattr(sm, name))[0],
                                 np.asarray(getattr(s1, name)), rtol=1e-5, err_msg=name)
    scales.append(float(s1.lr_scale))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6), pm, p1)
  assert len(set(scales)) > 3


def test_readme_gns_example_runs():
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
  start = readme.index("\n### The gradient noise scale: `gns`\n")
  block = re.compile(r"^```python\n(.*?)^```$", re.M | re.S).search(readme, start).group(1)
  namespace = {"__name__": "readme"}
  exec(compile(block, "README.md: gns", "exec"), namespace)
  state = namespace["state"]
  assert int(state.count) == 20 and int(state.skipped) == 0
  assert 0.01 <= float(gradvar_optax.lr_scale(state)) <= 1.0
  np.testing.assert_allclose(float(gradvar_optax.noise_scale(state, 64)),
                             64 * float(state.noise_to_signal), rtol=1e-6)


def test_shard_map_axis_name_path_equals_group_sq_norm_path():
  """shard_map with check_vma=False hands gns each replica's own gradient, as pmap does."""
  kw = dict(warmup_steps=3, decay=0.7, min_scale=0.1)
  mesh = Mesh(np.array(jax.devices()[:N_DEV]), ("batch",))
  opt = gradvar_optax.gns(optax.adam(0.1), axis_name="batch", **kw)

  def replica_step(params, state, x, y):
    updates, state = opt.update(jax.grad(_mse)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(jax.shard_map(replica_step, mesh=mesh, in_specs=(P(), P(), P("batch"),
                                                                   P("batch")),
                               out_specs=(P(), P()), check_vma=False))
  one = gradvar_optax.gns(optax.adam(0.1), **kw)
  grad_fn = jax.jit(gradvar_optax.microbatch_grad(_mse, N_DEV))
  params0 = {"w": jnp.zeros(6), "b": jnp.zeros(())}
  p, s = params0, opt.init(params0)
  p1, s1 = params0, one.init(params0)
  data = NamedSharding(mesh, P("batch"))
  for t in range(10):
    x, y = _regression(200 + t, batch=64)
    p, s = step(p, s, jax.device_put(x, data), jax.device_put(y, data))
    grads, q = grad_fn(p1, x, y)
    updates, s1 = one.update(grads, s1, p1, group_sq_norm=q, num_groups=N_DEV)
    p1 = optax.apply_updates(p1, updates)
    for name in ("lr_scale", "noise_to_signal", "count"):
      np.testing.assert_allclose(np.asarray(getattr(s, name)), np.asarray(getattr(s1, name)),
                                 rtol=1e-5, atol=2e-6, err_msg=f"{name} at step {t}")
  assert float(s1.lr_scale) != 1.0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p, p1)


_SHAPES = st.sampled_from([(), (0,), (1,), (3,), (2, 5), (3, 1, 4)])
_LEAF = st.tuples(_SHAPES, st.sampled_from([jnp.float32, jnp.bfloat16]))
_TREES = st.dictionaries(st.sampled_from("abcde"), st.one_of(
    _LEAF, st.dictionaries(st.sampled_from("xy"), _LEAF, max_size=2)), min_size=1, max_size=3)


def _leaves_of(spec, rng, scale):
  if isinstance(spec, dict):
    return {k: _leaves_of(v, rng, scale) for k, v in spec.items()}
  shape, dtype = spec
  return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


# Every example compiles its own update: few examples, no shrinking (see
# test_gradvar_properties.py), derandomized so a failure reproduces.
_RANDOM_TREES = dict(spec=_TREES, seed=st.integers(0, 2**16), nan_every=st.integers(2, 5))


@settings(max_examples=20, deadline=None, phases=(Phase.explicit, Phase.generate))
@given(**_RANDOM_TREES)
def test_any_tree_keeps_the_state_well_formed(spec, seed, nan_every):
  _check_random_tree(spec, seed, nan_every)


@pytest.mark.slow  # 50 compiles
@settings(max_examples=50, deadline=None, phases=(Phase.explicit, Phase.generate))
@given(**_RANDOM_TREES)
def test_fifty_random_trees_keep_the_state_well_formed(spec, seed, nan_every):
  _check_random_tree(spec, seed, nan_every)


def _check_random_tree(spec, seed, nan_every):
  rng = np.random.default_rng(seed)
  params = _leaves_of(spec, rng, 1.0)
  opt = gradvar_optax.gns(optax.adam(1e-2), warmup_steps=2, decay=0.5, min_scale=0.5)
  state = opt.init(params)
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  update = jax.jit(opt.update)
  for t in range(8):
    grads = _leaves_of(spec, rng, rng.uniform(0.1, 10))
    q = np.float32(np.nan if t % nan_every == 0 else
                   2 * gns_reference.sq_norm(jax.tree.leaves(grads)) + 1.0)
    updates, state = update(grads, state, params, group_sq_norm=q, num_groups=2)
    assert jax.tree.map(lambda x: x.dtype, updates) == jax.tree.map(lambda x: x.dtype, grads)
    assert np.isfinite(float(state.lr_scale)) and 0.5 <= float(state.lr_scale) <= 1.0
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
  assert int(state.skipped) == len(range(0, 8, nan_every))
  assert update._cache_size() == 1


def _worker_env(devices):
  env = dict(os.environ)
  env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                           "--xla_cpu_multi_thread_eigen=false",
              "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
  return stacks.child_env(env)


@pytest.mark.slow  # three processes start JAX and join a jax.distributed run
@pytest.mark.multiprocess
@pytest.mark.timeout(900)
def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
  """The axis_name path over real jax.distributed processes (gloo on 127.0.0.1)."""
  worker = pathlib.Path(__file__).with_name("gns_multihost_worker.py")
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
    deadline = time.monotonic() + 600
    codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
  except subprocess.TimeoutExpired:
    where = stacks.dump_stacks(procs, tmp_path / "stacks")
    pytest.fail(f"the runs did not finish in 600 s\n{where}\n"
                f"{stacks.summarize(tmp_path / 'stacks')}" +
                "".join(f"\n--- {log.name}\n{log.read_text()[-3000:]}" for log in logs))
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
  for got in two:
    assert (got["process_count"], got["device_count"]) == (2, 4)
    for t, (a, b) in enumerate(zip(got["steps"], one["steps"])):
      for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=2e-6,
                                   err_msg=f"{name} at step {t}")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 got["params"], one["params"])
  assert min(s["lr_scale"] for s in one["steps"]) < 0.99  # the scale moved
  assert one["steps"][-1]["count"] == 10 and one["steps"][-1]["skipped"] == 0

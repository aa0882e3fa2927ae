"""Property tests: any stream of gradients, finite or not, keeps reduce_on_stationarity's state
finite and well formed, and its decisions follow the NumPy reference."""

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from stationarity_reference import Reference
from stationarity_reference import delta as reference_delta

import gradvar_optax

# Tests from the 16th finite step on, every 4th, on a bucket of the last 16: a stream of a few
# dozen steps runs several tests, and the state is updated as often as it can be.
_KW = dict(factor=0.5, test_every=4, min_samples=16, keep_fraction=1.0, capacity=16)
_LR = 0.1
_OPT = gradvar_optax.reduce_on_stationarity(optax.sgd(_LR), **_KW)
_UPDATE = jax.jit(_OPT.update)
_RNG = np.random.default_rng(0)
# Fixed params (the updates are not applied): samples of both signs around -lr^2 |g|^2 / 2.
_PARAMS = {"a": jnp.asarray(_RNG.standard_normal((2, 3)), jnp.float32),
           "b": jnp.asarray(_RNG.standard_normal(4), jnp.float32),
           "c": jnp.asarray(_RNG.standard_normal(()), jnp.float32)}
_STATE = _OPT.init(_PARAMS)
# Sizes whose squares float32 still holds, so that the float64 reference sees the same samples.
_KINDS = ("normal", "normal", "normal", "nan", "inf", "neg_inf", "zero", "tiny", "huge")


def _grads(kind, rng):
  size = {"zero": 0.0, "tiny": 1e-15, "huge": 1e15}.get(kind, 10 ** rng.uniform(-3, 3))
  g = rng.standard_normal(11) * size
  if kind in ("nan", "inf", "neg_inf"):
    g[rng.integers(11)] = {"nan": np.nan, "inf": np.inf, "neg_inf": -np.inf}[kind]
  return {"a": jnp.asarray(g[:6].reshape(2, 3), jnp.float32),
          "b": jnp.asarray(g[6:10], jnp.float32), "c": jnp.asarray(g[10], jnp.float32)}


def _check_stream(kinds, seed):
  rng = np.random.default_rng(seed)
  state = _STATE
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  ref = Reference(**_KW)
  # Warm the bucket up to the first test with ordinary steps, then the drawn stream.
  for kind in ["normal"] * 15 + list(kinds):
    grads = _grads(kind, rng)
    before = ref.scale
    inner = [-_LR * np.asarray(g, np.float64) * float(before) for g in jax.tree.leaves(grads)]
    expected = ref.step(reference_delta(jax.tree.leaves(_PARAMS), inner))
    _, state = _UPDATE(grads, state, _PARAMS)
    # A test that float32 could call otherwise (a margin within 1e-4 of the samples' size) may
    # part the two runs; from there on only the bounds are checked.
    if ref.margin > 1e-4:
      assert float(state.lr_scale) == expected
      assert int(state.drops) == ref.drops and int(state.test_step) == ref.test[0]
    assert float(state.lr_scale) in {0.5 ** d for d in range(int(state.drops) + 1)}
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
  poisoned = sum(k in ("nan", "inf", "neg_inf") for k in kinds)
  assert int(state.skipped) == poisoned == ref.skipped
  assert int(state.steps) == 15 + len(kinds) - poisoned == ref.steps
  for name in ("samples", "test_mean", "test_lower", "test_upper", "lr_scale"):
    assert np.all(np.isfinite(np.asarray(getattr(state, name)))), name
  assert _UPDATE._cache_size() == 1


_STREAMS = dict(kinds=st.lists(st.sampled_from(_KINDS), min_size=1, max_size=40),
                seed=st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(**_STREAMS)
def test_any_stream_follows_the_rule(kinds, seed):
  _check_stream(kinds, seed)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(**_STREAMS)
def test_a_thousand_streams_follow_the_rule(kinds, seed):
  _check_stream(kinds, seed)

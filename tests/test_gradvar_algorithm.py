"""gradvar_optax against the NumPy reference of the seed's rule, in both API forms."""

from gradvar_reference import Reference
from gradvar_reference import poison
from gradvar_reference import stream
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradvar_optax

FORMS = {
    # wrapped: the base optimizer's updates (SGD with lr 1, i.e. -g) are scaled.
    "gradvar": (lambda **kw: gradvar_optax.gradvar(optax.sgd(1.0), **kw), -1.0),
    # chainable: its own input is scaled.
    "scale_by_gradvar": (lambda **kw: gradvar_optax.scale_by_gradvar(**kw), 1.0),
}


def run_both(opt, ref, grads_seq):
  """Replays a stream through the optimizer (jitted) and the reference; returns per-step logs."""
  params = jax.tree.map(jnp.zeros_like, grads_seq[0])
  state = opt.init(params)
  update = jax.jit(opt.update)
  log = []
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    ref_scale = ref.step(jax.tree.leaves(grads))
    log.append((updates, state, ref_scale))
  return log


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["rising", "falling", "random", "constant", "zero"])
@pytest.mark.parametrize("nonfinite", [False, True])
def test_matches_reference(form, kind, nonfinite):
  make, sign = FORMS[form]
  kw = dict(window=5, factor=0.1, min_scale=0.2, max_scale=3.0)
  grads_seq = stream(kind, steps=300, seed=len(kind))
  if nonfinite:
    grads_seq = poison(grads_seq, every=7)
  ref = Reference(**kw)
  log = run_both(make(**kw), ref, grads_seq)

  scales = np.array([float(s.lr_scale) for _, s, _ in log])
  ref_scales = np.array([r for _, _, r in log], np.float32)
  # Same decisions at the same steps, and the same values.
  np.testing.assert_array_equal(np.sign(np.diff(scales)), np.sign(np.diff(ref_scales)))
  np.testing.assert_allclose(scales, ref_scales, rtol=1e-6)
  final = log[-1][1]
  assert int(final.count) == ref.count
  assert int(final.skipped) == ref.skipped
  np.testing.assert_allclose(final.norms, ref.norms, rtol=1e-5)
  np.testing.assert_allclose(float(final.variability), ref.variability, rtol=1e-3, atol=1e-6)

  # Updates are the (base) updates times the scale of the same step.
  for (updates, state, _), grads in zip(log, grads_seq):
    expected = jax.tree.map(lambda g: sign * g * np.float32(state.lr_scale), grads)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-6), updates, expected)

  moves = np.count_nonzero(np.diff(scales))
  if kind in ("constant", "zero"):
    assert moves == 0 and scales[-1] == 1.0
  else:
    assert moves > 0
  if kind == "rising":
    assert scales[-1] < 1.0
  if kind == "falling":
    assert scales[-1] > 1.0


@pytest.mark.parametrize(
    "kw",
    [dict(tolerance=0.2), dict(smoothing=0.9), dict(window=3, factor=0.05),
     dict(window=8, min_scale=0.5, max_scale=1.5)],
    ids=["tolerance", "smoothing", "window3", "tight-bounds"],
)
def test_variants_match_reference(kw):
  grads_seq = poison(stream("random", steps=400, window=kw.get("window", 5), seed=3), every=11)
  ref = Reference(**kw)
  log = run_both(gradvar_optax.scale_by_gradvar(**kw), ref, grads_seq)
  scales = np.array([float(s.lr_scale) for _, s, _ in log])
  ref_scales = np.array([r for _, _, r in log], np.float32)
  np.testing.assert_allclose(scales, ref_scales, rtol=1e-6)
  assert np.count_nonzero(np.diff(scales)) > 0
  lo, hi = kw.get("min_scale", 0.1), kw.get("max_scale", 10.0)
  assert lo <= scales.min() and scales.max() <= hi


def test_decisions_every_window_from_the_second_on():
  opt = gradvar_optax.scale_by_gradvar(window=5)
  # Six windows of norms 1 + a_k * (-2, -1, 0, 1, 2) with a_k strictly falling.
  pattern = np.array([-2.0, -1.0, 0.0, 1.0, 2.0], np.float32)
  grads_seq = [{"w": np.full(3, 1 + a * d, np.float32)}
               for a in (0.3, 0.25, 0.2, 0.15, 0.1, 0.05) for d in pattern]
  state = opt.init(grads_seq[0])
  changed_at = []
  for t, g in enumerate(grads_seq, start=1):
    old = float(state.lr_scale)
    _, state = opt.update(g, state)
    if float(state.lr_scale) != old:
      changed_at.append(t)
  # The first full window (step 5) only sets the reference; falling variability raises the
  # scale by x1.1 at each later window boundary.
  assert changed_at == [10, 15, 20, 25, 30]
  np.testing.assert_allclose(float(state.lr_scale), np.float32(1.1) ** 5, rtol=1e-6)


def test_nonfinite_step_moves_nothing():
  opt = gradvar_optax.gradvar(optax.sgd(1.0))
  grads_seq = stream("random", steps=12, seed=2)
  state = opt.init(grads_seq[0])
  for g in grads_seq:
    _, state = opt.update(g, state)
  bad = jax.tree.map(lambda x: x * np.nan, grads_seq[0])
  _, after = opt.update(bad, state)
  for name in ("norms", "count", "variability", "reference", "lr_scale"):
    np.testing.assert_array_equal(getattr(after, name), getattr(state, name))
  assert int(after.skipped) == int(state.skipped) + 1


def test_updates_keep_dtype_and_state_stays_float32():
  params = {"w": jnp.ones((4,), jnp.bfloat16), "b": jnp.ones((), jnp.float32)}
  opt = gradvar_optax.gradvar(optax.adam(1e-3))
  state = opt.init(params)
  updates, state = jax.jit(opt.update)(params, state, params)
  assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  assert state.lr_scale.dtype == jnp.float32 and state.norms.dtype == jnp.float32


@pytest.mark.parametrize(
    "kw, name",
    [(dict(window=1), "window"), (dict(window=2.0), "window"), (dict(window=True), "window"),
     (dict(factor=0.0), "factor"), (dict(factor=1.0), "factor"), (dict(factor=-0.1), "factor"),
     (dict(min_scale=0.0), "min_scale"), (dict(max_scale=-1.0), "max_scale"),
     (dict(min_scale=2.0, max_scale=1.0), "min_scale"), (dict(tolerance=-0.1), "tolerance"),
     (dict(smoothing=1.0), "smoothing"), (dict(eps=0.0), "eps")],
)
@pytest.mark.parametrize("form", FORMS)
def test_bad_arguments_raise_naming_them(kw, name, form):
  with pytest.raises(ValueError, match=name):
    FORMS[form][0](**kw)

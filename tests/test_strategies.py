"""Every registered LR strategy against its closed form, step by step.

Each strategy runs on a small least-squares problem (`_trace`). At every step the test keeps the
effective LR that the strategy reports, the update it made and the gradient it was given. Two
things are then checked against formulas written out here, independently of train/strategies.py:

- the reported LR: the step schedule's two x0.1 drops, the cosine's warmup and shape, Prodigy's
  `d`, the plateau's constant scale (the training loss does not move it), gradvar's scale
  replayed by the NumPy reference (tests/gradvar_reference.py) on the recorded gradient norms,
  the null's coins, a replayed path, Mechanic's learned scale, schedule-free's warmup;
- the update: a NumPy Adam step at that LR (schedule-free's and Mechanic's own recursions around
  it). So the reported LR is the one the optimizer used.

`CHECKS` holds one check per registered name, and a test compares its keys with the registry, so
a new strategy fails the suite until it has a closed form here.

`plateau` also runs through the training loop, on a validation loss that cannot move
(`test_plateau_...`); tests/test_controls.py tests the controls' own pieces.
"""

from collections.abc import Callable
import dataclasses
import json
import pathlib
from typing import Any

from gns_reference import Reference as GNSReference
from gradvar_reference import Reference
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import stationarity_reference

import gradvar_optax
from train import config as config_lib
from train import loop
from train import records
from train import strategies

LR = 1e-2
SEED = 3  # gradvar-null's coins
# prodigy's "LR" is its estim_lr_coef; at LR (1e-2) its estimate would barely grow in 40 steps.
PRODIGY_COEF = 0.5
# Adam's defaults, which every Adam-based strategy keeps.
B1, B2, EPS = 0.9, 0.999, 1e-8


@dataclasses.dataclass(frozen=True)
class Run:
  """A run length, and what the strategies' rules give for it (worked out by hand)."""

  steps_per_epoch: int
  epochs: int
  warmup: int  # cosine: one epoch, but at most a tenth of the run
  drops: tuple[int, int]  # step: the 0-based steps of the x0.1 drops, at 50% and 75%

  @property
  def total(self) -> int:
    return self.steps_per_epoch * self.epochs


RUNS = {
    # 40 steps: a tenth of the run (4) is shorter than an epoch (5).
    "short-epochs": Run(steps_per_epoch=5, epochs=8, warmup=4, drops=(20, 30)),
    # 42 steps: one epoch (3) is shorter than a tenth of the run (4).
    "many-epochs": Run(steps_per_epoch=3, epochs=14, warmup=3, drops=(21, 31)),
}

# What the step passes as `value=`, which every strategy ignores: these means per epoch, with a
# zero-mean ripple inside each epoch. Fed to reduce_on_plateau as the training loss, as `plateau`
# used to be, they would halve the LR after epochs 4, 7, 9, ...; `plateau` must not react.
EPOCH_MEANS = [1.0, 0.9, 0.9, 0.89995, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
# Its scale after each epoch: an epoch improves on the best by more than 1e-4 (relative) or adds
# one to the count; at 2 (patience) the scale halves and the count restarts. 0.89995 is within
# 1e-4 of 0.9, so epoch 4 does not improve.
PLATEAU_SCALE = [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.0625, 0.03125,
                 0.03125]


def _values(run: Run) -> np.ndarray:
  ripple = 0.01 * (np.arange(run.steps_per_epoch) - (run.steps_per_epoch - 1) / 2)
  return np.concatenate([m + ripple for m in EPOCH_MEANS[:run.epochs]]).astype(np.float32)


@dataclasses.dataclass
class Trace:
  """What happened at each of a run's steps (index t = the 0-based step)."""

  run: Run
  lrs: np.ndarray  # the strategy's effective LR
  norms: np.ndarray  # the global norm of the gradient it got
  grads: np.ndarray  # [steps, n]: the gradients, flattened
  updates: np.ndarray  # [steps, n]: its updates, flattened
  states: list[Any]  # its state after each step; states[-1] is the initial one
  losses: np.ndarray
  strategy: strategies.Strategy
  params: Any  # the params after the last step
  group_sq_norms: np.ndarray  # q over the batch's GROUPS groups (which gns reads)


# The groups each step's batch of 16 rows is split into, as the train step does for gns.
GROUPS = 4


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _replayed(run: Run) -> np.ndarray:
  """The recorded effective-LR path that `replay-X` replays: it changes at every step."""
  return (LR * (1 + 0.5 * np.sin(np.arange(run.total)))).astype(np.float32)


def write_record(folder: pathlib.Path, strategy: str, lrs, steps=None) -> pathlib.Path:
  """A recorded run of `strategy`: config.json, and steps.jsonl with `lrs[k - 1]` at each step k
  of `steps` (1-based; default every step)."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps({"strategy": strategy}))
  steps = range(1, len(lrs) + 1) if steps is None else steps
  rows = [records.StepRow(step=k, epoch=1, accuracy=0.5, effective_lr=float(lrs[k - 1]),
                          grad_norm=1.0, loss=1.0)
          for k in steps]
  (folder / "steps.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in rows))
  return folder


def _trace(name: str, run: Run, tmp_path: pathlib.Path | None = None) -> Trace:
  replay_from = None
  if name.startswith("replay-"):
    replay_from = str(write_record(tmp_path / "source", name.removeprefix("replay-"),
                                   _replayed(run)))
  strategy = strategies.build(name, strategies.StrategyArgs(
      PRODIGY_COEF if name == "prodigy" else LR, run.steps_per_epoch, run.epochs, seed=SEED,
      replay_from=replay_from))
  # Named like a LayerNorm's params: "scale" and "bias" also appear in the optimizer's moments, so
  # a strategy must not find its own state by those names.
  params = {"w": jnp.ones(4), "norm": {"scale": jnp.ones(()), "bias": jnp.zeros(())}}
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((run.total, 16, 4)).astype(np.float32)
  ys = xs @ np.arange(4, dtype=np.float32)
  values = _values(run)

  def loss_fn(p, x, y):
    return jnp.mean(((x @ p["w"]) * p["norm"]["scale"] + p["norm"]["bias"] - y) ** 2)

  @jax.jit
  def step(params, opt_state, x, y, value, t):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    split = lambda a: a.reshape((GROUPS, -1) + a.shape[1:])
    group_grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, split(x), split(y))
    q = jnp.mean(sum(jnp.sum(g ** 2, axis=tuple(range(1, g.ndim)))
                     for g in jax.tree.leaves(group_grads)))
    updates, new_state = strategy.optimizer.update(grads, opt_state, params, value=value,
                                                   group_sq_norm=q, num_groups=GROUPS)
    return (optax.apply_updates(params, updates), new_state, loss, grads, updates,
            strategy.effective_lr(opt_state, new_state, t), optax.tree.norm(grads), q)

  opt_state = strategy.optimizer.init(params)
  initial = opt_state
  out = {k: [] for k in ("lrs", "norms", "grads", "updates", "states", "losses",
                         "group_sq_norms")}
  for t in range(run.total):
    params, opt_state, loss, grads, updates, lr, norm, q = step(
        params, opt_state, xs[t], ys[t], values[t], t)
    for key, item in (("lrs", float(lr)), ("norms", float(norm)), ("grads", _flat(grads)),
                      ("updates", _flat(updates)), ("states", opt_state),
                      ("losses", float(loss)), ("group_sq_norms", float(q))):
      out[key].append(item)
  trace = Trace(run=run, **{k: np.asarray(v) for k, v in out.items() if k != "states"},
                states=out["states"] + [initial], strategy=strategy, params=params)
  assert np.all(np.isfinite(trace.lrs)) and np.all(np.isfinite(trace.losses))
  # Mechanic's learned scale starts at 6e-6 (x LR): it cannot move the loss in 40 steps.
  assert trace.losses[-1] < trace.losses[0] or name == "mechanic"
  return trace


def _adam_updates(grads: np.ndarray, lrs: np.ndarray) -> np.ndarray:
  """Adam's updates (optax's defaults, float64) for these gradients at these per-step LRs."""
  m = np.zeros(grads.shape[1])
  v = np.zeros(grads.shape[1])
  out = []
  for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    out.append(-lr * (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS))
  return np.asarray(out)


def _assert_adam_at(trace: Trace, lrs: np.ndarray, grads=None) -> None:
  """The updates are Adam's at `lrs` (on `grads`, by default the ones the strategy got)."""
  expected = _adam_updates(trace.grads if grads is None else grads, lrs)
  np.testing.assert_allclose(trace.updates, expected, rtol=2e-5, atol=1e-7 * LR)


def _constant(run: Run) -> np.ndarray:
  return np.full(run.total, LR)


def _step_schedule(run: Run) -> np.ndarray:
  t = np.arange(run.total)
  first, second = run.drops
  return LR * np.where(t < first, 1.0, np.where(t < second, 0.1, 0.01))


def _cosine_schedule(run: Run) -> np.ndarray:
  """Linear from 0 to LR over `warmup` steps, then half a cosine down to 0 at the run's end."""
  t = np.arange(run.total, dtype=np.float64)
  w, total = run.warmup, run.total
  return np.where(t < w, LR * t / w, LR * 0.5 * (1 + np.cos(np.pi * (t - w) / (total - w))))


def _check_scheduled_adam(schedule: Callable[[Run], np.ndarray]):
  def check(trace: Trace) -> None:
    lrs = schedule(trace.run)
    np.testing.assert_allclose(trace.lrs, lrs, rtol=1e-6, atol=1e-7 * LR)
    _assert_adam_at(trace, lrs)
  return check


def check_step(trace: Trace) -> None:
  _check_scheduled_adam(_step_schedule)(trace)
  # Two drops of exactly x0.1 each, at 50% and 75% of the run, and no other change.
  changes = np.flatnonzero(np.diff(trace.lrs)) + 1
  assert changes.tolist() == list(trace.run.drops)
  np.testing.assert_allclose(trace.lrs[changes] / trace.lrs[changes - 1], 0.1, rtol=1e-6)


def check_cosine(trace: Trace) -> None:
  _check_scheduled_adam(_cosine_schedule)(trace)
  w = trace.run.warmup
  # Warmup: from 0, rising linearly; its last step is the only one at the peak LR.
  assert trace.lrs[0] == 0.0
  np.testing.assert_allclose(np.diff(trace.lrs[:w + 1]), LR / w, rtol=1e-5)
  assert int(np.argmax(trace.lrs)) == w
  assert np.all(np.diff(trace.lrs[w:]) < 0)


def check_plateau(trace: Trace) -> None:
  """The training losses (`value=`) would have halved the scale (PLATEAU_SCALE); they must not:
  only `observe_eval` moves it (tests/test_controls.py), so without evaluations it is Adam."""
  assert min(PLATEAU_SCALE[:trace.run.epochs]) < 1  # the values would have moved a plateau
  np.testing.assert_array_equal(trace.lrs, np.float32(LR))
  _assert_adam_at(trace, _constant(trace.run))
  for state in trace.states:
    plateau = _only(state, optax.contrib.ReduceLROnPlateauState)
    assert float(plateau.scale) == 1.0 and int(plateau.count) == 0
    assert float(plateau.best_value) == np.inf
  assert trace.strategy.observe_eval is not None


def check_prodigy(trace: Trace) -> None:
  """Prodigy's effective LR is the distance estimate `d` (ProdigyState.estim_lr) its step ran at.

  optax's prodigy steps with the `d` of the state it starts from, then raises it: the LR of step t
  is the `d` of states[t - 1] (states[-1] is the initial state).
  """
  ds = np.array([float(_prodigy_state(s).estim_lr) for s in trace.states])
  after = ds[:-1]
  before = np.concatenate([ds[-1:], after[:-1]])
  np.testing.assert_allclose(trace.lrs, before, rtol=1e-6)
  # `d` is really estimated: it starts at 1e-6 and grows by orders of magnitude.
  assert ds[-1] == np.float32(1e-6)
  assert after[-1] > 1e3 * ds[-1]
  assert np.all(np.diff(after) >= 0) and len(set(after.tolist())) > 5
  # The base LR is Prodigy's `estim_lr_coef`: each new estimate is LR x numerator / denominator.
  estimates = []
  for s in trace.states[:-1]:
    state = _prodigy_state(s)
    denominator = sum(float(np.sum(np.abs(x))) for x in jax.tree.leaves(state.grad_sum))
    estimates.append(PRODIGY_COEF * float(state.numerator_weighted) / denominator)
  np.testing.assert_allclose(after, np.maximum(before, estimates), rtol=1e-5)
  assert np.any(np.asarray(estimates) > before)  # the coefficient decided some steps


def _only(state, kind):
  found = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
           if isinstance(x, kind)]
  assert len(found) == 1
  return found[0]


def _prodigy_state(state):
  return _only(state, optax.contrib.ProdigyState)


def _check_gradvar(base: Callable[[Run], np.ndarray], **rule):
  """gradvar wrapping Adam: LR = base LR x the reference's scale, replayed on the norms."""

  def check(trace: Trace) -> None:
    reference = Reference(**rule)
    scales = np.array([reference.step([n]) for n in trace.norms], np.float64)
    assert np.count_nonzero(np.diff(scales)) >= 1, "no decision moved the scale: a vacuous check"
    lrs = base(trace.run) * scales
    np.testing.assert_allclose(trace.lrs, lrs, rtol=1e-6, atol=1e-7 * LR)
    _assert_adam_at(trace, lrs)
    recorded = [float(gradvar_optax.lr_scale(s)) for s in trace.states[:-1]]
    np.testing.assert_allclose(recorded, scales, rtol=1e-6)

  return check


def check_gradvar_before_adam(trace: Trace) -> None:
  """The factor scales Adam's input: the LR stays the base LR; Adam runs on scaled gradients."""
  np.testing.assert_array_equal(trace.lrs, np.float32(LR))
  reference = Reference()
  scales = np.array([reference.step([n]) for n in trace.norms], np.float64)
  assert np.count_nonzero(np.diff(scales)) >= 1
  recorded = [float(gradvar_optax.lr_scale(s)) for s in trace.states[:-1]]
  np.testing.assert_allclose(recorded, scales, rtol=1e-6)
  _assert_adam_at(trace, _constant(trace.run), grads=trace.grads * scales[:, None])


def _null_scales(run: Run, window=5, factor=0.1, lo=0.1, hi=10.0) -> np.ndarray:
  """gradvar's cadence (every finite step here) with the moves decided by the contract's coins:
  decision k (0-based, at step (k + 1) x window) lowers the scale iff
  bernoulli(fold_in(key(SEED), k), 1/2); decision 0 has no earlier window and keeps it."""
  scale, out = 1.0, []
  for t in range(run.total):
    count = t + 1
    if count % window == 0 and count > window:
      k = count // window - 1
      down = bool(jax.random.bernoulli(jax.random.fold_in(jax.random.key(SEED), k), 0.5))
      scale = float(np.clip(scale * (1 - factor if down else 1 + factor), lo, hi))
    out.append(scale)
  return np.asarray(out)


def check_gradvar_null(trace: Trace) -> None:
  scales = _null_scales(trace.run)
  ratios = scales[1:] / scales[:-1]
  assert np.any(np.isclose(ratios, 0.9)) and np.any(np.isclose(ratios, 1.1))  # both ways
  np.testing.assert_allclose(trace.lrs, LR * scales, rtol=1e-6)
  _assert_adam_at(trace, LR * scales)
  recorded = [float(gradvar_optax.lr_scale(s)) for s in trace.states[:-1]]
  np.testing.assert_allclose(recorded, scales, rtol=1e-6)


def check_replay(trace: Trace) -> None:
  """The recorded path, logged at every step, comes back exactly, step by step."""
  np.testing.assert_array_equal(trace.lrs, _replayed(trace.run))
  _assert_adam_at(trace, _replayed(trace.run).astype(np.float64))


def check_schedule_free(trace: Trace) -> None:
  """Schedule-Free AdamW (Defazio et al.) on the recorded gradients, in float64.

  z steps by AdamW without momentum at the warmup schedule (the effective LR, at the 0-based
  step); the trained params y = b1 x + (1 - b1) z, where x averages z with weights max_lr^2.
  The averaging weight reads the schedule one step ahead (optax's step_count starts at 1).
  """
  run, b1 = trace.run, 0.9
  sched = lambda n: LR * min(n / run.warmup, 1.0)
  np.testing.assert_allclose(trace.lrs, [sched(t) for t in range(run.total)], rtol=1e-6)
  y = _flat({"w": jnp.ones(4), "norm": {"scale": jnp.ones(()), "bias": jnp.zeros(())}})
  z, v, weights, max_lr, updates = y.copy(), np.zeros_like(y), 0.0, 0.0, []
  for t, g in enumerate(trace.grads):
    max_lr = max(max_lr, sched(t + 1))
    weights += max_lr**2
    ck = max_lr**2 / weights
    v = B2 * v + (1 - B2) * g * g
    z_next = z - sched(t) * g / (np.sqrt(v / (1 - B2 ** (t + 1))) + EPS)
    x = (1 - ck) * (y - (1 - b1) * z) / b1 + ck * z_next
    y_next = b1 * x + (1 - b1) * z_next
    updates.append(y_next - y)
    y, z = y_next, z_next
  # Within float32's rounding of y - y_next at params of about 1 to 3 (2 ulps).
  np.testing.assert_allclose(trace.updates, updates, rtol=1e-4, atol=5e-7)
  # Evaluation uses x, from the optax function on the state inside the strategy's.
  eval_params = trace.strategy.eval_params(trace.states[-2], trace.params)
  np.testing.assert_allclose(_flat(eval_params), x, rtol=1e-4, atol=1e-6)
  assert np.max(np.abs(_flat(eval_params) - _flat(trace.params))) > 1e-3


def check_mechanic(trace: Trace) -> None:
  """Mechanic around Adam: params = x0 - S x delta, S = the sum of its `s`.

  With a_t Adam's update at LR, optax's memory-saving form recomputes delta from the params x_t:
  delta = (x0 - x_t) / (S_t + 1e-8) - a_t, so x_{t+1} = x0 - S_{t+1} delta; the effective LR is
  LR x S_{t+1}. Its steps (~1e-8 here) are below float32's resolution at params near 1, so each
  element is compared to within two float32 spacings of its value; the bias (from 0) resolves it.
  """
  scale = np.array([float(np.sum(_only(s, optax.contrib.MechanicState).s))
                    for s in trace.states])
  after, before = scale[:-1], np.concatenate([scale[-1:], scale[:-2]])
  # S starts at 6 x s_init and is learned: it moves at every step (down here, at first).
  assert before[0] == pytest.approx(6e-6, rel=1e-6)
  assert np.all(after != before) and np.max(scale) > 2 * np.min(scale)
  np.testing.assert_allclose(trace.lrs, LR * after, rtol=1e-6)
  adam = _adam_updates(trace.grads, _constant(trace.run))
  x0 = _flat({"w": jnp.ones(4), "norm": {"scale": jnp.ones(()), "bias": jnp.zeros(())}})
  x = x0.astype(np.float32)
  for t in range(trace.run.total):
    delta = (x0 - x) / (before[t] + 1e-8) - adam[t]
    expected = x0 - after[t] * delta - x
    tolerance = 2 * np.spacing(np.abs(x).astype(np.float32)).astype(np.float64) + 1e-4 * np.abs(
        expected)
    assert np.all(np.abs(trace.updates[t] - expected) <= tolerance), t
    x = (x + trace.updates[t].astype(np.float32)).astype(np.float32)
  assert np.all(trace.updates[:, 0] != 0)  # the bias (first in key order) resolves every step


def check_gns(trace: Trace) -> None:
  """gns wrapping Adam: LR = base LR x the NumPy reference's scale, replayed on |g|^2 and q.

  Its warmup is cosine's (one epoch, at most a tenth of the run).
  """
  reference = GNSReference(warmup_steps=trace.run.warmup)
  scales, ratios = [], []
  for norm, q in zip(trace.norms, trace.group_sq_norms):
    scales.append(reference.step(float(norm) ** 2, float(q), GROUPS))
    ratios.append(reference.noise_to_signal)
  scales = np.array(scales)
  assert np.count_nonzero(np.diff(scales)) >= 1, "the scale never moved: a vacuous check"
  lrs = _constant(trace.run) * scales
  np.testing.assert_allclose(trace.lrs, lrs, rtol=1e-5, atol=1e-7 * LR)
  _assert_adam_at(trace, lrs)
  recorded = [float(gradvar_optax.noise_to_signal(s)) for s in trace.states[:-1]]
  np.testing.assert_allclose(recorded, ratios, rtol=1e-4)


def _stationarity_scales(grads, updates, x0, lr, **options):
  """The scale of each step by the NumPy reference (tests/stationarity_reference.py), replayed on
  the params the run went through: `x0` plus the updates applied so far, in float32 as
  `optax.apply_updates` adds them. A step's sample is Adam's update at the scale before it."""
  reference = stationarity_reference.Reference(**options)
  unit = _adam_updates(grads, np.ones(len(grads)))
  x, scales = np.asarray(x0, np.float32), []
  for t in range(len(grads)):
    before = float(reference.scale)
    scales.append(float(reference.step(stationarity_reference.delta(
        [x], [lr * before * unit[t]]))))
    x = (x + updates[t].astype(np.float32)).astype(np.float32)
  return np.asarray(scales), reference


def check_stationarity(trace: Trace) -> None:
  """reduce_on_stationarity(adam) with the strategy's options: its first test is due at step
  8 x min_samples (200), past these runs, so it is Adam at LR with the scale at exactly 1 and no
  test; the reference, replayed on the run, agrees. `test_stationarity_drops_...` sees drops."""
  options = strategies.STATIONARITY_OPTIONS
  assert options["factor"] == 0.1 and 8 * options["min_samples"] > trace.run.total
  x0 = _flat({"w": jnp.ones(4), "norm": {"scale": jnp.ones(()), "bias": jnp.zeros(())}})
  scales, reference = _stationarity_scales(trace.grads, trace.updates, x0, LR, **options)
  np.testing.assert_array_equal(scales, 1.0)
  assert reference.test == (0, 0.0, 0.0, 0.0)
  np.testing.assert_array_equal(trace.lrs, np.float32(LR))
  _assert_adam_at(trace, _constant(trace.run))
  last = trace.states[-2]
  assert float(gradvar_optax.lr_scale(last)) == 1.0
  assert int(gradvar_optax.stationarity_drops(last)) == 0
  assert int(gradvar_optax.stationarity_test(last).step) == 0


CHECKS: dict[str, Callable[[Trace], None]] = {
    "fixed": _check_scheduled_adam(_constant),
    "step": check_step,
    "cosine": check_cosine,
    "plateau": check_plateau,
    "prodigy": check_prodigy,
    "gradvar": _check_gradvar(_constant),
    "gradvar-cosine": _check_gradvar(_cosine_schedule),
    "gradvar-smooth": _check_gradvar(_constant, smoothing=0.9),
    "gradvar-deadband": _check_gradvar(_constant, tolerance=0.1),
    "gradvar-window20": _check_gradvar(_constant, window=20),
    "gradvar-factor0.05": _check_gradvar(_constant, factor=0.05),
    "gradvar-before-adam": check_gradvar_before_adam,
    "gradvar-null": check_gradvar_null,
    "matched-gradvar": _check_scheduled_adam(_constant),
    "matched-gns": _check_scheduled_adam(_constant),
    "replay-gradvar": check_replay,
    "replay-gns": check_replay,
    "schedule-free": check_schedule_free,
    "mechanic": check_mechanic,
    "gns": check_gns,
    "stationarity": check_stationarity,
    "replay-stationarity": check_replay,
}


def test_every_registered_strategy_has_a_closed_form_check():
  assert sorted(CHECKS) == strategies.names()


@pytest.mark.parametrize("run", sorted(RUNS))
@pytest.mark.parametrize("name", strategies.names())
def test_effective_lr_and_updates_follow_the_closed_form(name, run, tmp_path):
  CHECKS[name](_trace(name, RUNS[run], tmp_path))


def test_unknown_strategy_lists_the_known_ones():
  with pytest.raises(ValueError, match="known strategies: .*gradvar"):
    strategies.build("adagrad-ish", strategies.StrategyArgs(1e-3, 10, 2, seed=0,
                                                            replay_from=None))


def test_stationarity_drops_by_the_factor_where_the_reference_does(monkeypatch):
  """`stationarity` from the registry, its test made due early (every 10 steps, from 16 samples
  kept, so from step 128), on a noisy quadratic (gradient w + N(0, 1)): Adam's transient ends
  well before step 128, so the test passes, and each drop is exactly x0.1 at the step where the
  NumPy reference, replayed on the run's params, drops."""
  monkeypatch.setitem(strategies.STATIONARITY_OPTIONS, "test_every", 10)
  monkeypatch.setitem(strategies.STATIONARITY_OPTIONS, "min_samples", 16)
  lr, steps = 0.05, 400
  strategy = strategies.build("stationarity", strategies.StrategyArgs(lr, steps, 1, seed=0,
                                                                      replay_from=None))
  params = {"w": jnp.full(8, 3.0)}
  noise = np.random.default_rng(1).standard_normal((steps, 8)).astype(np.float32)

  @jax.jit
  def step(params, opt_state, noise, t):
    grads = {"w": params["w"] + noise}
    updates, new_state = strategy.optimizer.update(grads, opt_state, params, value=0.0)
    return (optax.apply_updates(params, updates), new_state, grads, updates,
            strategy.effective_lr(opt_state, new_state, t))

  opt_state = strategy.optimizer.init(params)
  grads, updates, lrs = [], [], []
  for t in range(steps):
    params, opt_state, g, u, lr_t = step(params, opt_state, noise[t], t)
    grads.append(_flat(g))
    updates.append(_flat(u))
    lrs.append(float(lr_t))
  scales, reference = _stationarity_scales(np.asarray(grads), np.asarray(updates),
                                           np.full(8, 3.0), lr,
                                           **strategies.STATIONARITY_OPTIONS)
  drops = np.flatnonzero(np.diff(scales)) + 1
  assert len(drops) >= 1 and drops[0] >= 127, drops  # none before the first test (0-based 127)
  np.testing.assert_allclose(scales[drops] / scales[drops - 1], 0.1, rtol=1e-6)
  np.testing.assert_allclose(lrs, lr * scales, rtol=1e-6)
  assert int(gradvar_optax.stationarity_drops(opt_state)) == reference.drops == len(drops)
  np.testing.assert_allclose(np.asarray(updates), _adam_updates(np.asarray(grads), lr * scales),
                             rtol=2e-5, atol=1e-7 * lr)


# --- plateau in the training loop ----------------------------------------------------------------


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_plateau_halves_the_lr_when_the_validation_loss_stalls(tmp_path, data_dir):
  """Through the loop, which applies `observe_eval` after each epoch's evaluation."""
  # An LR so small that no parameter moves (Adam's step is about the LR), and a model without
  # dropout: every epoch's validation loss is the same.
  lr, steps_per_epoch, epochs = 1e-30, 6, 5
  config = config_lib.Config(
      task="rt_sentiment", workdir=str(tmp_path / "run"), strategy="plateau", model_size="tiny",
      epochs=epochs, batch_size=8, num_devices=1, train_examples=48, eval_examples=16,
      log_every=1, quiet=True, cache_dir=str(tmp_path / "cache"), data_dir=str(data_dir), lr=lr,
      model={"dropout_rate": 0.0, "word_dropout_rate": 0.0})
  loop.train(config)
  epochs_rows = _jsonl(tmp_path / "run" / "epochs.jsonl")
  steps = _jsonl(tmp_path / "run" / "steps.jsonl")
  assert len(steps) == steps_per_epoch * epochs
  val_losses = [r["val_loss"] for r in epochs_rows]
  np.testing.assert_allclose(val_losses, val_losses[0], rtol=1e-6)
  # Evaluation 1 sets the best loss, evaluations 2 and 3 do not improve on it: after 2 (the
  # patience) the scale halves, from the first step of epoch 4 on; again after evaluation 5,
  # when no step is left.
  expected = [1.0] * (3 * steps_per_epoch) + [0.5] * (2 * steps_per_epoch)
  np.testing.assert_allclose([s["effective_lr"] for s in steps], lr * np.asarray(expected),
                             rtol=1e-6)
  np.testing.assert_allclose([r["effective_lr"] for r in epochs_rows],
                             lr * np.array([1, 1, 1, 0.5, 0.5]), rtol=1e-6)

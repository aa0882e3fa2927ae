"""The controls' and reference arms' own pieces (train/controls.py), beyond the closed forms of
tests/test_strategies.py: the null's coins, cadence and resume; the replayed path; plateau on the
validation loss; schedule-free's evaluation params; matched = fixed."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from test_strategies import write_record

import gradvar_optax
from train import config as config_lib
from train import controls
from train import strategies

LR = 1e-2


def _args(name="x", lr=LR, steps_per_epoch=5, epochs=4, seed=0, replay_from=None):
  return strategies.StrategyArgs(lr, steps_per_epoch, epochs, seed=seed, replay_from=replay_from)


def _run(opt, grads, state=None, params=None):
  """Runs `opt` over the rows of `grads` ([steps, n]) with a scan; returns (states, updates)."""
  params = {"w": jnp.ones(grads.shape[1])} if params is None else params
  state = opt.init(params) if state is None else state

  def step(state, g):
    updates, state = opt.update({"w": g}, state, params, value=jnp.float32(1.0))
    return state, (state, updates["w"])

  _, (states, updates) = jax.jit(lambda s, gs: jax.lax.scan(step, s, gs))(state, grads)
  return states, updates


def _grads(steps, seed=0, n=3):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((steps, n)), jnp.float32)


# --- gradvar-null ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_the_null_walk_goes_down_half_the_time(seed):
  windows = 2000
  # Bounds that never bind, so that every decision after the first shows as a move.
  opt = controls.gradvar_null(optax.sgd(1e-3), seed=seed, min_scale=1e-30, max_scale=1e30)
  states, _ = _run(opt, _grads(windows * 5, seed))
  scale = np.asarray(states.lr_scale, np.float64)
  ratios = scale[1:] / scale[:-1]
  moves = ratios[ratios != 1]
  assert len(moves) == windows - 1  # one per decision, from the second on
  np.testing.assert_allclose(np.sort(np.unique(np.round(moves, 5))), [0.9, 1.1])
  down = np.mean(moves < 1)
  standard_error = np.sqrt(0.25 / len(moves))
  assert abs(down - 0.5) < 3 * standard_error, down
  # And no memory: the lag-1 autocorrelation of the decisions is about 0 (gradvar's is -0.3).
  d = (moves < 1).astype(np.float64) - down
  assert abs(np.sum(d[1:] * d[:-1]) / np.sum(d * d)) < 3 / np.sqrt(len(moves))


def test_the_null_takes_gradvars_decisions_at_gradvars_steps_within_its_bounds():
  # Non-finite gradients at some steps: gradvar counts only finite norms, and so must the null.
  grads = np.array(_grads(300, 5))
  grads[[3, 4, 17, 18, 19, 150]] = np.nan
  grads = jnp.asarray(grads)
  null_states, _ = _run(controls.gradvar_null(optax.sgd(1e-3), seed=7), grads)
  gv_states, _ = _run(gradvar_optax.gradvar(optax.sgd(1e-3)), grads)
  # Everything but the scale is gradvar's: buffer, counts, and the variability it did not use.
  for field in ("norms", "count", "skipped", "variability", "reference"):
    np.testing.assert_array_equal(getattr(null_states, field), getattr(gv_states, field), field)
  count = np.asarray(gv_states.count)
  previous = np.concatenate([[0], count[:-1]])
  decides = (count != previous) & (count % 5 == 0) & (count > 5)
  scale = np.asarray(null_states.lr_scale, np.float64)
  before = np.concatenate([[1.0], scale[:-1]])
  changed = scale != before
  # It moves only where gradvar decides, and at each such step unless a bound holds it.
  assert not np.any(changed & ~decides)
  at_bound = np.isclose(before, 0.1) | np.isclose(before, 10.0)
  assert np.all(changed[decides] | at_bound[decides])
  assert np.all((scale >= np.float32(0.1)) & (scale <= np.float32(10.0)))
  ratio = scale[changed] / before[changed]
  inside = (scale[changed] > 0.1 + 1e-6) & (scale[changed] < 10 - 1e-5)
  np.testing.assert_allclose(np.sort(np.unique(np.round(ratio[inside], 5))), [0.9, 1.1])
  # The run is long enough to reach the lower bound (a coin drifts down) or at least to move.
  assert np.count_nonzero(changed) > 20


def test_the_null_depends_on_the_seed_not_on_the_gradients():
  a, _ = _run(controls.gradvar_null(optax.sgd(1e-3), seed=0), _grads(200, 0))
  b, _ = _run(controls.gradvar_null(optax.sgd(1e-3), seed=0), 10 * _grads(200, 1))
  c, _ = _run(controls.gradvar_null(optax.sgd(1e-3), seed=1), _grads(200, 0))
  np.testing.assert_array_equal(a.lr_scale, b.lr_scale)
  assert np.any(np.asarray(a.lr_scale) != np.asarray(c.lr_scale))


def _first(tree):
  return jax.tree.map(lambda x: x[-1], tree)


def test_the_null_resumes_bitwise_from_a_saved_state(tmp_path):
  """17 steps, an orbax save and restore, 23 more: the same states, bit for bit, as 40 at once."""
  strategy = strategies.build("gradvar-null", _args(seed=11))
  opt, grads = strategy.optimizer, _grads(40, 3)
  whole, whole_updates = _run(opt, grads)
  first, _ = _run(opt, grads[:17])
  saved = _first(first)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", saved)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, saved)
  restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  rest, rest_updates = _run(opt, grads[17:], state=restored)
  for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[17:], whole)), jax.tree.leaves(rest)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(whole_updates[17:], rest_updates)
  assert len(set(np.asarray(whole.lr_scale).tolist())) > 2  # the coins moved it


# --- matched and replay --------------------------------------------------------------------------


@pytest.mark.parametrize("of", ["gradvar", "gns"])
def test_matched_is_fixed_adam_at_the_lr_it_is_given(of):
  grads = _grads(30, 2)
  fixed = strategies.build("fixed", _args(lr=3.7e-4))
  matched = strategies.build(f"matched-{of}", _args(lr=3.7e-4))
  a_states, a = _run(fixed.optimizer, grads)
  b_states, b = _run(matched.optimizer, grads)
  np.testing.assert_array_equal(a, b)
  assert float(matched.effective_lr(None, None, 0)) == np.float32(3.7e-4)


def _replay_lrs(name, folder, steps_per_epoch, epochs):
  strategy = strategies.build(name, _args(steps_per_epoch=steps_per_epoch, epochs=epochs,
                                          replay_from=str(folder)))
  total = steps_per_epoch * epochs
  _, updates = _run(strategy.optimizer, _grads(total, 4))
  lrs = np.array([float(strategy.effective_lr(None, None, jnp.int32(t))) for t in range(total)])
  return lrs, updates


def test_the_replay_reproduces_a_path_logged_every_step(tmp_path):
  path = (LR * np.exp(np.random.default_rng(0).standard_normal(20))).astype(np.float32)
  folder = write_record(tmp_path / "src", "gradvar", path)
  lrs, updates = _replay_lrs("replay-gradvar", folder, 5, 4)
  np.testing.assert_array_equal(lrs.astype(np.float32), path)
  # The optimizer ran at those LRs: Adam's first step is about -lr x sign(g).
  np.testing.assert_allclose(np.abs(updates[0]), path[0], rtol=1e-4)


def _gradvar_path(total):
  strategy = strategies.build("gradvar", _args())
  states, _ = _run(strategy.optimizer, _grads(total, 8) * jnp.linspace(1, 3, total)[:, None])
  return (LR * np.asarray(states.lr_scale)).astype(np.float32)


def test_a_gradvar_path_logged_every_5_steps_replays_exactly(tmp_path):
  # gradvar's scale changes only at its decisions, at steps 5, 10, ... (all finite here): a row
  # every 5 steps holds every value, each logged at the step that set it.
  path = _gradvar_path(40)
  assert len(set(path.tolist())) > 3
  folder = write_record(tmp_path / "src", "gradvar", path, steps=range(5, 41, 5))
  lrs, _ = _replay_lrs("replay-gradvar", folder, 10, 4)
  np.testing.assert_array_equal(lrs.astype(np.float32), path)


def test_a_path_between_logged_rows_replays_as_a_staircase(tmp_path):
  # Rows at steps 3 and 7 of a 10-step run: the first value before step 3 too, each value from
  # its own step (update k - 1, 0-based) on, and the last one to the end.
  path = np.arange(1, 11, dtype=np.float32) * 1e-3
  folder = write_record(tmp_path / "src", "gns", path, steps=[3, 7])
  lrs, _ = _replay_lrs("replay-gns", folder, 5, 2)
  np.testing.assert_allclose(lrs, [3e-3] * 6 + [7e-3] * 4, rtol=1e-6)


def test_a_bad_replay_source_is_an_error_naming_the_field(tmp_path):
  def fails(replay_from, match, of="gradvar"):
    with pytest.raises(ValueError, match=f"config.replay_from: .*{match}"):
      strategies.build(f"replay-{of}", _args(replay_from=replay_from))

  fails(None, "needs the folder")
  fails(str(tmp_path / "nowhere"), "config.json")
  folder = write_record(tmp_path / "gns-run", "gns", [1e-3] * 20)
  fails(str(folder), "strategy 'gns'; replay-gradvar replays a gradvar run")
  (folder / "steps.jsonl").unlink()
  fails(str(folder), "steps.jsonl: no such file", of="gns")
  folder = write_record(tmp_path / "nan", "gradvar", [1e-3] * 20)
  rows = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
  rows[4]["effective_lr"] = None
  (folder / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  fails(str(folder), "step 5 has no finite effective_lr")
  (folder / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3:1:-1]))
  fails(str(folder), "step 3 follows step 4")
  write_record(folder, "gradvar", [1e-3] * 20, steps=range(2, 16, 2))
  fails(str(folder), "ends at step 14 \\(rows every 2 steps\\); this run takes 20")
  (folder / "steps.jsonl").write_text('{"step": 1}\n{}\n')
  fails(str(folder), "lacks the required field")


def test_the_config_takes_replay_from_only_with_a_replay_strategy(tmp_path):
  base = config_lib.Config(task="rt_sentiment", workdir=str(tmp_path))
  config_lib.validate(base)
  # Without it a replay run validates (the runner fills it in later); building it fails (above).
  config_lib.validate(config_lib.apply_overrides(base, ["strategy=replay-gradvar"]))
  with pytest.raises(ValueError, match="config.replay_from: is only for the replay-X"):
    config_lib.validate(config_lib.apply_overrides(base, ["replay_from=runs/x"]))
  config_lib.validate(config_lib.apply_overrides(
      base, ["strategy=replay-gradvar", "replay_from=runs/x"]))
  assert "replay_from" in config_lib.field_names(trajectory=True, owners=("runner",))


# --- plateau on the validation loss ---------------------------------------------------------------


def _plateau_scale(state):
  return controls.find_state(state, optax.contrib.ReduceLROnPlateauState).scale


@pytest.mark.parametrize("wrap", ["plain", "apply_if_finite"])
def test_plateau_halves_after_patience_evaluations_and_ignores_training_losses(wrap):
  strategy = strategies.build("plateau", _args())
  opt = strategy.optimizer
  if wrap == "apply_if_finite":  # as the loop builds it with skip_nonfinite
    opt = optax.apply_if_finite(opt, max_consecutive_errors=10)
  params = {"w": jnp.ones(3)}
  state = opt.init(params)
  step = jax.jit(lambda s, v: opt.update(params, s, params, value=v))
  observe = jax.jit(strategy.observe_eval)
  # Training losses that stall for 30 steps: a training-loss plateau would have halved it.
  for _ in range(30):
    updates, state = step(state, jnp.float32(1.0))
  assert float(_plateau_scale(state)) == 1.0
  # Validation losses: 1.0 sets the best, 0.99995 is within rtol 1e-4; two such evaluations
  # (the patience) halve the scale; 0.5 improves; two more stalls halve it again.
  scales = []
  for val_loss in [1.0, 0.99995, 1.0, 0.5, 0.6, 0.5, 0.9]:
    state = observe(state, jnp.float32(val_loss))
    scales.append(float(_plateau_scale(state)))
  assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]
  # The halved scale applies at the next step: Adam's step at LR / 4.
  updates, after = step(state, jnp.float32(1.0))
  lr = float(strategy.effective_lr(state, after, jnp.int32(30)))
  assert lr == pytest.approx(LR * 0.25, rel=1e-6)


def test_plateau_observes_a_replicated_state_per_replica():
  strategy = strategies.build("plateau", _args())
  state = strategy.optimizer.init({"w": jnp.ones(3)})
  replicated = jax.tree.map(lambda x: jnp.stack([x, x]), state)
  for val_loss in [1.0, 1.0, 1.0]:
    replicated = jax.jit(strategy.observe_eval)(replicated, jnp.float32(val_loss))
  np.testing.assert_array_equal(_plateau_scale(replicated), [0.5, 0.5])


# --- schedule-free --------------------------------------------------------------------------------


def test_schedule_free_evaluates_optax_averaged_params():
  strategy = strategies.build("schedule-free", _args())
  params = {"w": jnp.ones(3)}
  state = strategy.optimizer.init(params)
  step = jax.jit(lambda p, s, g: strategy.optimizer.update(g, s, p, value=1.0))
  for g in _grads(12, 6):
    updates, state = step(params, state, {"w": g})
    params = optax.apply_updates(params, updates)
  evaluated = strategy.eval_params(state, params)
  expected = optax.contrib.schedule_free_eval_params(state, params)
  np.testing.assert_array_equal(evaluated["w"], expected["w"])
  assert np.max(np.abs(np.asarray(evaluated["w"] - params["w"]))) > 1e-4
  # The same inside the loop's apply_if_finite wrapper, and per replica on a replicated state.
  wrapped = optax.apply_if_finite(strategy.optimizer, 10).init(params)._replace(inner_state=state)
  np.testing.assert_array_equal(strategy.eval_params(wrapped, params)["w"], expected["w"])
  stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)
  replicated = jax.jit(strategy.eval_params)(stack(state), stack(params))
  np.testing.assert_allclose(replicated["w"], np.stack([expected["w"]] * 2), rtol=1e-6)
  # Its effective LR: cosine's warmup (here 2 steps: a tenth of 20), then the LR.
  lrs = [float(strategy.effective_lr(None, None, jnp.int32(t))) for t in range(4)]
  np.testing.assert_allclose(lrs, [0, LR / 2, LR, LR], rtol=1e-6)


def test_the_other_strategies_evaluate_their_trained_params():
  for name in strategies.names():
    if name.startswith("replay-"):  # needs a record; tested above
      continue
    strategy = strategies.build(name, _args())
    assert (strategy.eval_params is not None) == (name == "schedule-free"), name
    assert (strategy.observe_eval is not None) == (name == "plateau"), name


def test_the_cli_lists_the_new_strategies(capsys):
  from train import __main__ as cli
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  out = capsys.readouterr().out
  for name in ("gradvar-null", "schedule-free", "mechanic", "matched-gradvar", "replay-gradvar"):
    assert name in out

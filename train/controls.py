"""The pieces of the control and reference strategies that optax does not have.

- `gradvar_null`: gradvar's moves without gradvar's information: a fair coin at each decision.
- `plateau_on_eval`: `optax.contrib.reduce_on_plateau` fed the validation loss at evaluations,
  not the training loss of every step.
- `replay_schedule`: the effective-LR path of a recorded run, as a piecewise-constant schedule.
- `find_state`: the one sub-state of a kind in any nesting of an optimizer state (`chain`,
  `apply_if_finite`, ...), which `observe_eval` and `eval_params` need.

Strategies (train/strategies.py) build on these; they hold no registry of their own.
"""

from collections.abc import Callable
import json
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradvar_optax import _gradvar
from train import records


def coin(seed: int, decision: jax.Array) -> jax.Array:
  """The null's decision `decision` (0-based): True lowers the scale. A fair coin."""
  return jax.random.bernoulli(jax.random.fold_in(jax.random.key(seed), decision), 0.5)


def gradvar_null(
    base_optimizer: optax.GradientTransformation,
    *,
    seed: int,
    window: int = 5,
    factor: float = 0.1,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """`gradvar_optax.gradvar` with each decision replaced by a fair coin: a control.

  Everything but the decision is gradvar's (defaults included): the global norm of the raw
  gradients is measured, only finite norms count, a decision falls every `window` finite steps,
  the first decision has no earlier window and keeps the scale, every later one multiplies it by
  `1 - factor` or `1 + factor`, clipped to `[min_scale, max_scale]`, and the new scale applies to
  the updates of the very step that decides it. Only which way it moves differs: decision `k`
  (0-based, the `k`-th window end; `k = count // window - 1`) lowers the scale iff
  `coin(seed, k)`, a Bernoulli(1/2) from `fold_in(key(seed), k)`. So the path depends on the
  seed and on how many finite steps were taken, never on the gradients' values, and a resumed
  run draws the same coins: the key is a function of the state's `count`, which is saved.

  Unlike gradvar, an exact tie (constant gradients) moves the scale too: a coin has no ties.

  The state is a `gradvar_optax.GradVarState`, so `gradvar_optax.lr_scale` reads the null's
  scale as it reads gradvar's, and `gradvar_optax.variability` reads the variability the null
  measured (as gradvar would have, `smoothing=0`) and did not use.

  Args:
    base_optimizer: the optimizer whose step is scaled, e.g. `optax.adam(lr)`.
    seed: the run's seed; the coins' key is `jax.random.key(seed)`.
    window: finite steps per decision (gradvar's 5), a Python int >= 2.
    factor: relative size of a move, in (0, 1).
    min_scale: lower bound of the scale.
    max_scale: upper bound of the scale.
    eps: added to the mean norm in the (unused) variability, as in gradvar.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose state is a `GradVarState`.
  """
  if isinstance(window, bool) or not isinstance(window, int) or window < 2:
    raise ValueError(f"window must be a Python int >= 2, got {window!r}")
  if not 0.0 < factor < 1.0:
    raise ValueError(f"factor must be in (0, 1), got {factor!r}")
  if not 0.0 < min_scale <= max_scale:
    raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale!r}, {max_scale!r}")

  def by_coin(v, reference, count):
    del v, reference
    return jnp.where(coin(seed, count // window - 1), 1 - factor, 1 + factor)

  # gradvar's own state machine, with smoothing 0: the reference is the window's variability.
  return _gradvar._gradvar(base_optimizer, by_coin, window=window, min_scale=min_scale,
                           max_scale=max_scale, smoothing=0.0, eps=eps, axis_name=None)


# --- finding a sub-state -------------------------------------------------------------------------


def find_state(opt_state: Any, kind: type) -> Any:
  """The one sub-state of type `kind` in `opt_state`; an error if there is none or several."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
           if isinstance(x, kind)]
  if len(found) != 1:
    raise ValueError(f"expected one {kind.__name__} in the optimizer state, found {len(found)}")
  return found[0]


def replace_state(opt_state: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
  """`opt_state` with its one sub-state of type `kind` replaced by `fn(sub_state)`."""
  find_state(opt_state, kind)  # exactly one
  return jax.tree.map(lambda x: fn(x) if isinstance(x, kind) else x, opt_state,
                      is_leaf=lambda x: isinstance(x, kind))


def _per_replica(fn: Callable, leading: int) -> Callable:
  """`fn` mapped over `leading` leading axes: a state replicated by pmap has one (the devices)."""
  for _ in range(leading):
    fn = jax.vmap(fn)
  return fn


# --- plateau on the validation loss --------------------------------------------------------------


class PlateauOnEval(NamedTuple):
  transformation: optax.GradientTransformationExtraArgs
  observe_eval: Callable[[Any, jax.Array], Any]


def plateau_on_eval(*, factor: float, patience: int, rtol: float,
                    min_scale: float) -> PlateauOnEval:
  """`reduce_on_plateau` split in two: the step applies the scale, an evaluation moves it.

  The transformation's `update` multiplies the updates by the current scale and leaves the
  state alone (so the `value=` the train step passes is ignored); `observe_eval(opt_state,
  val_loss)` runs `optax.contrib.reduce_on_plateau`'s own update on the `ReduceLROnPlateauState`
  inside `opt_state` with `accumulation_size=1`: each evaluation is one observation, so
  `patience` counts evaluations. The new scale applies from the next step on.
  """
  plateau = optax.contrib.reduce_on_plateau(
      factor=factor, patience=patience, rtol=rtol, accumulation_size=1, min_scale=min_scale)
  kind = optax.contrib.ReduceLROnPlateauState

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u: state.scale.astype(u.dtype) * u, updates), state

  def observe_eval(opt_state, val_loss):
    def observe(state):
      one = lambda s: plateau.update((), s, value=val_loss)[1]
      return _per_replica(one, jnp.ndim(state.scale))(state)

    return replace_state(opt_state, kind, observe)

  return PlateauOnEval(optax.GradientTransformationExtraArgs(plateau.init, update_fn),
                       observe_eval)


# --- schedule-free's evaluation params -----------------------------------------------------------


def schedule_free_eval_params(opt_state: Any, params: Any) -> Any:
  """`optax.contrib.schedule_free_eval_params` on the `ScheduleFreeState` inside `opt_state`.

  A state and params replicated over a leading device axis (pmap) are handled per replica.
  """
  state = find_state(opt_state, optax.contrib.ScheduleFreeState)
  fn = _per_replica(optax.contrib.schedule_free_eval_params, jnp.ndim(state.b1))
  return fn(state, params)


# --- replaying a recorded LR path ----------------------------------------------------------------


def _bad(message: str):
  return ValueError(f"config.replay_from: {message}")


def read_path(replay_from: str | None, total_steps: int, of: str) -> np.ndarray:
  """The effective LR of each of this run's updates (0-based), from a recorded run of `of`.

  The folder's `steps.jsonl` logs, at 1-based steps `k`, the effective LR of update `k` (the
  0-based update `k - 1`). The row logged at step `k` applies from update `k - 1` on, until the
  next logged row; before the first logged row, its value. Updates after the last logged row
  keep the last value. So the path is reproduced exactly where the source logged every step,
  and wherever its LR changed only at logged steps: gradvar with a constant base LR changes its
  scale only at decisions, which fall at steps that are multiples of its window (5) when every
  step is finite, so a gradvar run logged every 5 (or 1) steps replays exactly; a path that
  changes between logged rows (a schedule, gns) replays as a staircase.

  Args:
    replay_from: the recorded run's folder (with `config.json` and `steps.jsonl`).
    total_steps: this run's updates.
    of: the strategy the recorded run must have used.

  Returns:
    float32 `[max(total_steps, last logged step)]`.

  Raises:
    ValueError: naming `config.replay_from`: no folder given, a file missing or damaged, a run of
      another strategy, no rows, a step out of order, a non-finite LR, or a record that ends
      more than its logging interval before this run does.
  """
  if not replay_from:
    raise _bad(f"replay-{of} needs the folder of a recorded {of} run (--set replay_from=DIR)")
  folder = pathlib.Path(replay_from)
  try:
    source = json.loads((folder / "config.json").read_text()).get("strategy")
  except (OSError, ValueError, AttributeError) as e:
    raise _bad(f"{folder / 'config.json'}: cannot read the recorded run's config ({e})") from None
  if source != of:
    raise _bad(f"{folder} is a run of strategy {source!r}; replay-{of} replays a {of} run")
  try:
    rows = records.read_steps(folder / "steps.jsonl")
  except FileNotFoundError:
    raise _bad(f"{folder / 'steps.jsonl'}: no such file") from None
  except ValueError as e:
    raise _bad(str(e)) from None
  if not rows:
    raise _bad(f"{folder / 'steps.jsonl'}: no rows")
  steps = [r.step for r in rows]
  for previous, row in zip([0] + steps, rows):
    if row.step <= previous:
      raise _bad(f"{folder / 'steps.jsonl'}: step {row.step} follows step {previous}")
    if row.effective_lr is None or not np.isfinite(row.effective_lr):
      raise _bad(f"{folder / 'steps.jsonl'}: step {row.step} has no finite effective_lr")
  # A record that stops short (a run cut off and not resumed) would replay its last LR for the
  # rest of this run: with rows every `spacing` steps, a full record's last row is within one
  # spacing of this run's end.
  spacing = min(np.diff(steps)) if len(steps) > 1 else steps[0]
  if steps[-1] + spacing <= total_steps:
    raise _bad(f"{folder / 'steps.jsonl'} ends at step {steps[-1]} (rows every {spacing} "
               f"steps); this run takes {total_steps}: is the recorded run complete?")
  values = np.asarray([r.effective_lr for r in rows], np.float32)
  updates = np.arange(max(total_steps, steps[-1]))
  # The last logged row at or before 1-based step t + 1; the first row before any.
  index = np.searchsorted(np.asarray(steps), updates + 1, side="right") - 1
  return values[np.maximum(index, 0)]


def array_schedule(values: np.ndarray) -> optax.Schedule:
  """`values[t]` at step t (held at the last value beyond the end); one constant array."""
  table = jnp.asarray(values, jnp.float32)
  last = table.shape[0] - 1
  return lambda count: table[jnp.clip(count, 0, last)]

"""Where a run starts: fresh, or from its latest good checkpoint (`train.loop` calls `start`).

A checkpoint holds one tree, `{"train": TrainState, "rng": key data}`, and its metadata: the
config, the position (epochs done, the data iterator, the unfinished epoch's sums, the last epoch
row, the clocks) and the optimizer state's layout. The optimizer state is always inside
`optax.apply_if_finite`'s (`train.loop.finite_guard`), so it has one shape whether non-finite
steps are skipped or not. Checkpoints written before that (without `OPT_LAYOUT` in their
metadata) by a run without `skip_nonfinite` hold the strategy's state alone; `_old_layout` and
`_converted` convert them, here and nowhere else.
"""

import dataclasses
import logging
import pathlib
from typing import Any
import warnings

import jax
import numpy as np
import optax

from train import checkpoint as checkpoint_lib
from train import records

RESUME_MODES = ("latest", "allow-fresh")
# The metadata key, and value, of a checkpoint whose optimizer state is wrapped in
# `optax.apply_if_finite` whatever `skip_nonfinite` says.
OPT_LAYOUT = ("opt_layout", "apply_if_finite")


def resume_mode(resume: bool | str) -> str | None:
  if resume is False or resume is None:
    return None
  if resume is True:
    return "latest"
  if resume in RESUME_MODES:
    return resume
  raise ValueError(f"resume: must be True, False, 'latest' or 'allow-fresh', got {resume!r}")


@dataclasses.dataclass
class Position:
  """Where a run stands at a checkpoint (fresh: at the start)."""
  step: int = 0
  epochs_done: int = 0  # epochs whose rows are written
  data: dict | None = None  # the training iterator's state
  epoch_acc: dict | None = None  # sums of the unfinished epoch's metrics (`EpochSums.to_json`)
  last_row: dict = dataclasses.field(default_factory=dict)
  clock: dict | None = None  # `Clock.to_json()`


def _old_layout(meta: dict[str, Any]) -> bool:
  """A checkpoint from before the optimizer was always wrapped, of a run that did not wrap it."""
  key, value = OPT_LAYOUT
  return meta.get(key) != value and not meta.get("config", {}).get("skip_nonfinite", False)


def _abstract_for(abstract_state):
  """The restore target of a checkpoint, from its metadata (`Checkpoints.restore_latest`)."""
  rng = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))

  def abstract_for(meta: dict[str, Any]):
    state = abstract_state
    if _old_layout(meta):
      state = state._replace(opt_state=state.opt_state.inner_state)
    return {"train": state, "rng": rng}

  return abstract_for


def _converted(state, meta: dict[str, Any]):
  """A restored state in today's layout: an old one's optimizer state wrapped, as
  `optax.apply_if_finite`'s `init` wraps it (no non-finite step seen)."""
  if not _old_layout(meta):
    return state
  return state._replace(opt_state=optax.ApplyIfFiniteState(
      np.zeros((), np.int32), np.array(True), np.zeros((), np.int32), state.opt_state))


def _epoch_acc(acc: dict | None, readouts) -> dict | None:
  """The unfinished epoch's sums of the step's metrics and of the strategy's readouts only: an
  old checkpoint's hold every strategy's `lr_scale`, `variability` and `noise_to_signal`."""
  if acc is None:
    return None
  keep = set(records.STEP_METRICS) | set(readouts)
  return {**acc, "sums": {k: v for k, v in acc["sums"].items() if k in keep}}


def start(s, workdir: pathlib.Path, ckpts: checkpoint_lib.Checkpoints, mode: str | None,
          present: list[str], init_state):
  """The starting state, RNG and position, and what a resume restored (None when fresh).

  Args:
    s: the run's `train.loop.Setup`.
    workdir: the run's folder.
    ckpts: its checkpoints.
    mode: `resume_mode(resume)`.
    present: the run files already in `workdir`.
    init_state: `() -> TrainState`, the fresh state.
  """
  restored, skipped = None, []
  if mode is not None:
    abstract = jax.eval_shape(init_state)
    restored, skipped = ckpts.restore_latest(_abstract_for(abstract), s.config.to_json())
  if restored is None:
    if mode == "latest":
      why = ("; skipped: " + "; ".join(skipped)) if skipped else ""
      raise checkpoint_lib.NoCheckpointError(
          f"resume: no usable checkpoint in {ckpts.directory}{why}; pass resume='allow-fresh' "
          "(--resume=allow-fresh) to start the run over")
    if present:
      warnings.warn(f"resume: no usable checkpoint in {ckpts.directory}; starting {workdir} "
                    f"over and removing its records ({', '.join(present)})", stacklevel=3)
      ckpts.delete_all()
      if jax.process_index() == 0:
        checkpoint_lib.clear_records(workdir)
    return init_state(), jax.random.key(s.config.seed + 1), Position(), None
  meta = restored.meta
  position = Position(step=restored.step, epochs_done=meta["epochs_done"], data=meta["data"],
                      epoch_acc=_epoch_acc(meta["epoch_acc"], s.strategy.spec.readouts),
                      last_row=meta["last_row"], clock=meta["clock"])
  if jax.process_index() == 0:
    removed = checkpoint_lib.truncate_records(workdir, position.step, position.epochs_done)
  else:
    removed = {}
  dropped = ", ".join(f"{n} rows of {name}" for name, n in removed.items() if n)
  logging.warning("resuming %s from step %d (epoch %d done)%s", workdir, position.step,
                  position.epochs_done, f"; dropped the later {dropped}" if dropped else "")
  rng = jax.random.wrap_key_data(restored.state["rng"])
  state = _converted(restored.state["train"], meta)
  resumed = {"step": position.step, "epochs_done": position.epochs_done, "skipped": skipped}
  return state, rng, position, resumed


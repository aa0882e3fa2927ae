"""Resumable checkpoints of a training run, and what resuming needs around them.

A checkpoint is one orbax `CheckpointManager` step under `<workdir>/checkpoints/<step>/`, named by
the global step (optimizer updates taken) and holding two items:

- `state`: a host copy (one replica, NumPy) of the `TrainState` (params, batch_stats, the whole
  optimizer state with the gradvar ring buffer) and the run's RNG key data. A host copy does not
  depend on the launcher or the device count; it is restored with a target (`StandardRestore` of
  the abstract state), so the NamedTuples of optax and gradvar come back as themselves.
- `meta` (JSON): where the run stands (global step, epochs whose records are written, the data
  iterator's state, the sums of the epoch's metrics so far, the clocks), the config it ran with,
  and a CRC-32 of every leaf of `state`, so that silently damaged arrays are detected, not
  trained on.

Every process calls the manager (orbax coordinates the primary host itself); only process 0
writes records, so only it truncates them.
"""

from collections.abc import Callable
import contextlib
import dataclasses
import json
import logging
import pathlib
import shutil
import signal
import threading
from typing import Any, Optional
import warnings
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from train import config as config_lib

META_VERSION = 1
# Config fields that leave the training trajectory unchanged (their `trajectory` role in
# `train.config`); every other field (and any field added later) must be equal for `--resume` to
# continue a run.
HARMLESS_FIELDS = config_lib.field_names(trajectory=False)
# orbax writes a step into a folder with this in its name and renames it when complete.
_TMP_MARK = ".orbax-checkpoint-tmp"


class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint; `--resume` continues it."""

  def __init__(self, signal_name: str, step: int, epoch: int, directory: pathlib.Path):
    self.signal_name, self.step, self.epoch, self.directory = signal_name, step, epoch, directory
    super().__init__(f"{signal_name}: saved a checkpoint at step {step} (epoch {epoch}) in "
                     f"{directory}; rerun with --resume to continue")


class NoCheckpointError(ValueError):
  """`resume` was asked for but no usable checkpoint exists."""


def mismatched_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  """The trajectory-changing config fields whose values differ, sorted by name."""
  keys = (set(saved) | set(current)) - HARMLESS_FIELDS
  return sorted(k for k in keys if saved.get(k) != current.get(k))


def _digest(tree) -> list[int]:
  return [zlib.crc32(np.ascontiguousarray(x).reshape(-1).view(np.uint8))
          for x in jax.tree.leaves(tree)]


@dataclasses.dataclass
class Restored:
  step: int
  state: Any  # the host tree saved as `state`
  meta: dict[str, Any]


class Checkpoints:
  """The run's checkpoint folder: save (idempotent per step) and restore-the-latest-good.

  Args:
    directory: `<workdir>/checkpoints`.
    keep: how many checkpoints to keep (the oldest go first). Two or more let a damaged latest one
      fall back to the previous.
  """

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self._keep = keep
    # Interrupted saves, listed before the manager cleans them up on opening.
    self.unfinished = sorted(p.name for p in self.directory.glob(f"*{_TMP_MARK}*"))
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(self._keep), create=True,
        cleanup_tmp_directories=True,
        # Synchronous: when `save` returns the step is on disk, so a preempted run can exit at
        # once, and the loop can take the save's time off the training clock.
        enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
    """Saves `state` (a host tree) and `meta` at `step`; False when that step is already saved."""
    if step in self._manager.all_steps():
      return False
    meta = {**meta, "version": META_VERSION, "step": step, "digest": _digest(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    return True

  def _read_meta(self, step: int) -> dict[str, Any]:
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    if not isinstance(meta, dict) or meta.get("version") != META_VERSION:
      raise ValueError(f"its metadata is not version {META_VERSION}")
    if meta.get("step") != step:
      raise ValueError(f"its metadata names step {meta.get('step')}")
    return meta

  def _read_state(self, step: int, meta: dict[str, Any], abstract) -> Any:
    state = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    if _digest(state) != meta["digest"]:
      raise ValueError("its arrays do not match the checksums saved with them")
    return state

  def restore_latest(self, abstract_for: Callable[[dict], Any], config: dict[str, Any]
                     ) -> tuple[Optional[Restored], list[str]]:
    """The latest checkpoint that reads back intact, and what was skipped on the way (reasons).

    `abstract_for(saved_meta)` gives the restore target of a checkpoint saved with that metadata
    (its `config` and what the loop added, `train.resume`).
    Damaged checkpoints newer than the one restored are deleted, so that the run can save those
    steps again. A checkpoint of a different config raises `ValueError` naming the fields.
    """
    skipped = [f"unfinished save {name}" for name in self.unfinished]
    for reason in skipped:
      warnings.warn(f"{self.directory}: skipping {reason}", stacklevel=2)
    for step in reversed(self.steps()):
      meta = state = None
      try:
        meta = self._read_meta(step)
      except Exception as e:  # orbax/tensorstore raise many kinds
        error = e
      if meta is not None:
        # Checked before the arrays: another config's arrays would not fit the target anyway.
        differ = mismatched_fields(meta.get("config", {}), config)
        if differ:
          changes = ", ".join(f"{k}: {meta['config'].get(k)!r} -> {config.get(k)!r}"
                              for k in differ)
          raise ValueError(f"resume: the config differs from the checkpointed run's in fields "
                           f"that change its trajectory ({changes}); use a new workdir, or "
                           "the checkpointed values")
        try:
          state = self._read_state(step, meta, abstract_for(meta))
        except Exception as e:
          error = e
      if state is None:
        reason = f"checkpoint {step} ({type(error).__name__}: {_first_line(error)})"
        skipped.append(reason)
        warnings.warn(f"{self.directory}: skipping damaged {reason}", stacklevel=2)
        continue
      self._delete_after(step)
      return Restored(step, state, meta), skipped
    return None, skipped

  def _delete_after(self, step: int) -> None:
    for later in self.steps():
      if later > step:
        self._manager.delete(later)

  def delete_all(self) -> None:
    """Removes every checkpoint (a fresh start in a workdir whose checkpoints are all damaged)."""
    self._manager.close()
    shutil.rmtree(self.directory, ignore_errors=True)
    self._manager = self._open()

  def close(self) -> None:
    self._manager.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else ""


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      break  # A row cut short by a kill: it and anything after it post-date the checkpoint.
  return rows


def _rewrite_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
  tmp.replace(path)


def truncate_records(workdir: pathlib.Path, step: int, epochs_done: int) -> dict[str, int]:
  """Drops the rows written after a checkpoint; returns how many rows each file lost.

  `steps.jsonl` and `evals.jsonl` keep the rows of steps `<= step`, `epochs.jsonl` those of
  epochs `<= epochs_done`. (An evaluation at a checkpointed step is written before that
  checkpoint is saved, so its row is kept.) TensorBoard event files are append-only and keep
  their later points: after a resume TensorBoard can show two values at the steps that were
  trained twice.
  """
  removed = {}
  for name, key, last in (("steps.jsonl", "step", step), ("evals.jsonl", "step", step),
                          ("epochs.jsonl", "epoch", epochs_done)):
    path = workdir / name
    if not path.exists():
      continue
    lines = len(path.read_text().splitlines())
    rows = [r for r in _read_jsonl(path) if r[key] <= last]
    removed[name] = lines - len(rows)
    if removed[name]:
      _rewrite_jsonl(path, rows)
  return removed


def clear_records(workdir: pathlib.Path) -> None:
  """Removes a previous attempt's records, for a fresh start in the same workdir."""
  for name in ("epochs.jsonl", "steps.jsonl", "evals.jsonl", "run.json"):
    (workdir / name).unlink(missing_ok=True)
  shutil.rmtree(workdir / "tb", ignore_errors=True)


class PreemptionWatch:
  """Notes SIGTERM/SIGINT so that the loop can save at the next step boundary and stop.

  With one process, the first SIGTERM or SIGINT is recorded and the previous handlers come back,
  so a second signal acts as usual (a second Ctrl-C interrupts at once). With several processes
  the signals are left to JAX's preemption service, which agrees on one step for every process
  (`multihost_utils.reached_preemption_sync_point`); a process stopping alone would hang the
  others in their next collective.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: Optional[str] = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._restore()
    logging.warning("%s received: saving a checkpoint at the next step boundary",
                    self.signal_name)

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __enter__(self) -> "PreemptionWatch":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()

  def requested(self, step: int) -> Optional[str]:
    """The signal to stop for at this step boundary, if any (call it at every step)."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      with contextlib.suppress(RuntimeError):  # No preemption service: no notice to follow.
        if multihost_utils.reached_preemption_sync_point(step):
          return "SIGTERM"
      return None
    return self.signal_name

"""The run's clocks; saved in every checkpoint, so that a resumed run continues them.

Like big_vision's `Chrono`, a clock object that the loop pauses and that is serializable. It keeps
three measures:

- the wall clock (`elapsed`): everything since the loop started (compilation, evaluation,
  logging and checkpoint saves included), summed over the run's starts;
- the training clock: only the epochs' steps. It is stopped while step rows are logged and
  checkpoints saved (`paused`), and from the end of an epoch's steps to the start of the next
  epoch's (evaluation, the epoch's record and its checkpoint);
- the process's CPU time over each epoch's steps, from the start of the epoch's steps to their
  end; the logging and checkpoint saves within the epoch are included, its evaluation is not.

A checkpoint stores `to_json()`: `train_time_total` (the finished epochs' training time),
`epoch_train` and `epoch_cpu` (the unfinished epoch's so far) and `elapsed`. A resumed run's
clock starts from them; the time between the kill and the resume counts nowhere.
"""

from collections.abc import Callable, Iterator
import contextlib
import time
from typing import NamedTuple

import jax

_FIELDS = ("train_time_total", "epoch_train", "epoch_cpu", "elapsed")


class EpochTime(NamedTuple):
  """The clocks at an epoch's record (seconds)."""
  train_s: float  # the epoch's training time
  train_total_s: float  # the finished epochs', this one included
  cpu_s: float  # the process's CPU time over the epoch's steps
  elapsed_s: float  # wall time since the run's start


class Clock:
  """The wall, training and CPU clocks of one run (see the module docstring).

  Args:
    saved: `to_json()` of the clock as a checkpoint saved it; None for a fresh run.
    wall: the wall clock read (seconds); tests pass a fake one.
    cpu: the CPU clock read (seconds).
  """

  def __init__(self, saved: dict[str, float] | None = None, *,
               wall: Callable[[], float] = time.perf_counter,
               cpu: Callable[[], float] = time.process_time):
    saved = dict.fromkeys(_FIELDS, 0.0) if saved is None else saved
    missing = [k for k in _FIELDS if k not in saved]
    if missing:
      raise ValueError(f"clock: the saved clock lacks {', '.join(missing)}; got {saved!r}")
    self._wall, self._cpu = wall, cpu
    self._start = wall() - saved["elapsed"]
    self.train_time_total = float(saved["train_time_total"])
    # The unfinished epoch's training and CPU time up to `_running_since` / `_cpu_since`.
    self._epoch_train = float(saved["epoch_train"])
    self._epoch_cpu = float(saved["epoch_cpu"])
    self._running_since: float | None = None  # the training clock runs when set
    self._cpu_since: float | None = None  # the epoch's CPU time is taken when set
    self._last: tuple[float, float] | None = None  # (train, cpu) of the epoch just ended

  @property
  def running(self) -> bool:
    return self._running_since is not None

  def elapsed(self) -> float:
    return self._wall() - self._start

  def epoch_train(self) -> float:
    """The unfinished epoch's training time so far."""
    running = self._wall() - self._running_since if self.running else 0.0
    return self._epoch_train + running

  def epoch_cpu(self) -> float:
    taken = self._cpu() - self._cpu_since if self._cpu_since is not None else 0.0
    return self._epoch_cpu + taken

  def start_epoch(self) -> None:
    """Starts the training and CPU clocks for an epoch's steps (a resumed epoch's go on)."""
    if self.running:
      raise RuntimeError("clock: start_epoch while the training clock runs")
    self._running_since, self._cpu_since = self._wall(), self._cpu()

  @contextlib.contextmanager
  def paused(self, wait_for=None) -> Iterator[None]:
    """Stops the training clock for the block, once `wait_for` is computed.

    The steps run asynchronously: waiting for their results first keeps their time on the
    training clock, and only the block's own time off it.
    """
    if not self.running:
      raise RuntimeError("clock: paused while the training clock is stopped")
    jax.block_until_ready(wait_for)
    self._epoch_train = self.epoch_train()
    self._running_since = None
    try:
      yield
    finally:
      self._running_since = self._wall()

  def end_epoch(self, wait_for=None) -> None:
    """Stops the clocks at the end of an epoch's steps (once `wait_for` is computed) and adds
    the epoch to the total; `last_epoch()` then reads it."""
    if not self.running:
      raise RuntimeError("clock: end_epoch while the training clock is stopped")
    jax.block_until_ready(wait_for)
    self._last = (self.epoch_train(), self.epoch_cpu())
    self.train_time_total += self._last[0]
    self._epoch_train = self._epoch_cpu = 0.0
    self._running_since = self._cpu_since = None

  def last_epoch(self) -> EpochTime:
    """The epoch that `end_epoch` ended, with the wall time of now."""
    if self._last is None:
      raise RuntimeError("clock: last_epoch before any end_epoch")
    train, cpu = self._last
    return EpochTime(train_s=train, train_total_s=self.train_time_total, cpu_s=cpu,
                     elapsed_s=self.elapsed())

  def to_json(self) -> dict[str, float]:
    """What a checkpoint saves (the keys of every checkpoint so far)."""
    return {"train_time_total": self.train_time_total, "epoch_train": self.epoch_train(),
            "epoch_cpu": self.epoch_cpu(), "elapsed": self.elapsed()}

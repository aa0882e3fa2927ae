"""An epoch of the training loop: its steps, the sums of their metrics, its record and its saves.

`train.loop` sets a run up and calls `run_epoch` for each epoch left; a `Run` holds what the
epochs share and where the run stands, which is what a checkpoint saves (with the data iterator's
state and the clock, `train.clock`).

Evaluations. Every epoch ends with one on the validation split (its `EpochRow`). With
`eval_every_steps` K there is also one at every global step that is a multiple of K, with the
training clock paused, each giving a row of evals.jsonl (`records.EvalRow`); at an epoch's last
step the epoch's evaluation is that row's, not a second one. A strategy with `observe_eval` sees
the validation loss of every such evaluation (of each epoch's, without K); the state it returns is
what the next step and the checkpoint get. Each evaluation happens before the checkpoint of its
step, so a resumed run evaluates and observes exactly where an uninterrupted one does.
"""

from collections.abc import Callable, Iterator
import dataclasses
import itertools
import math
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
from tqdm import tqdm

from train import checkpoint as checkpoint_lib
from train import clock as clock_lib
from train import records
from train import resume as resume_lib
from train import step as step_lib
from train import watchdog
from train.test_signals import TEST_SIGNALS_ENV  # noqa: F401 (the loop's name for it)
from train.test_signals import parse_test_signals  # noqa: F401
from train.test_signals import with_test_signals

# With `skip_nonfinite`, optax.apply_if_finite skips this many non-finite steps in a row, then
# gives up (applies one) and the run stops: a fault that persists is not a glitch to step over.
MAX_CONSECUTIVE_NONFINITE = 10
# Step rows wait on the host for at most this many steps; writing them syncs with the device.
_MAX_PENDING_ROWS = 50


class NonFiniteError(RuntimeError):
  """A step's loss or gradient was not finite; the last good checkpoint is kept as it was."""

  def __init__(self, step: int, epoch: int, detail: str):
    self.step, self.epoch = step, epoch
    super().__init__(f"non-finite loss or gradient at step {step} (epoch {epoch}): {detail}")


@jax.jit
def _accumulate(acc, metrics, step):
  """Adds a step's metrics to the epoch's sums; steps with a non-finite loss or gradient are
  counted instead of added, and the first of them is noted."""
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  if acc is None:
    zero = jnp.zeros_like(finite, jnp.int32)
    acc = {"sums": jax.tree.map(jnp.zeros_like, metrics), "finite_steps": zero,
           "nonfinite_steps": zero, "first_nonfinite": zero}
  return {
      "sums": jax.tree.map(lambda a, m: a + jnp.where(finite, m, 0), acc["sums"], metrics),
      "finite_steps": acc["finite_steps"] + finite,
      "nonfinite_steps": acc["nonfinite_steps"] + ~finite,
      "first_nonfinite": jnp.where((acc["first_nonfinite"] == 0) & ~finite, step,
                                   acc["first_nonfinite"]),
  }


_COUNTS = ("finite_steps", "nonfinite_steps", "first_nonfinite")


@dataclasses.dataclass(frozen=True)
class EpochTotals:
  """The sums of an epoch's metrics so far, on the host (the checkpoint's `epoch_acc`)."""
  sums: dict[str, float]  # over the finite steps
  finite_steps: int
  nonfinite_steps: int
  first_nonfinite: int  # the first non-finite step (global), 0 if none

  def means(self) -> dict[str, float]:
    return {k: v / self.finite_steps if self.finite_steps else math.nan
            for k, v in self.sums.items()}


class EpochSums:
  """An epoch's metric sums, added on the devices so that a step needs no host sync.

  Args:
    tree: the sums as `_accumulate` keeps them; None before the epoch's first step.
  """

  def __init__(self, tree=None):
    self.tree = tree

  def add(self, metrics, step: int) -> None:
    self.tree = _accumulate(self.tree, metrics, step)

  def first_nonfinite(self, get: Callable) -> int:
    """The epoch's first non-finite step, 0 if none; `get` reads a replica (`Launcher.get`)."""
    return int(get(self.tree["first_nonfinite"]))

  def totals(self, get: Callable) -> EpochTotals:
    host = get(self.tree)
    # float32 -> Python float -> JSON -> float32 is exact, so a resumed epoch's row is the same.
    return EpochTotals({k: float(v) for k, v in host["sums"].items()},
                       **{k: int(host[k]) for k in _COUNTS})

  def to_json(self, get: Callable) -> dict[str, Any] | None:
    return None if self.tree is None else dataclasses.asdict(self.totals(get))

  @classmethod
  def from_json(cls, saved: dict[str, Any] | None) -> "EpochSums":
    if saved is None:
      return cls()
    return cls({"sums": {k: np.float32(v) for k, v in saved["sums"].items()},
                **{k: np.int32(saved[k]) for k in _COUNTS}})


def epoch_row(epoch: int, step: int, totals: EpochTotals, last: dict[str, Any],
              evaluation: dict[str, float], times: clock_lib.EpochTime, examples: int,
              devices, count_nonfinite: bool) -> records.EpochRow:
  """An epoch's record (a row of `epochs.jsonl`); the one place that builds it.

  Args:
    epoch, step: the epoch (from 1) and the global step at its end.
    totals: the sums of its steps' metrics.
    last: the metrics of its last step (host).
    evaluation: `loop.evaluate` on the validation split.
    times: the clocks, read after the evaluation.
    examples: the training examples in an epoch.
    devices: the run's devices (their peak memory is recorded).
    count_nonfinite: add `nonfinite_steps` (runs with `skip_nonfinite`).
  """
  means = totals.means()
  return records.EpochRow(
      epoch=epoch, step=step,
      train_loss=means["loss"], train_accuracy=means["accuracy"],
      val_loss=evaluation["validation_loss"], val_accuracy=evaluation["validation_accuracy"],
      effective_lr=float(last["effective_lr"]), effective_lr_mean=means["effective_lr"],
      train_time_s=times.train_s, train_time_total_s=times.train_total_s,
      elapsed_s=times.elapsed_s, cpu_time_s=times.cpu_s,
      examples_per_s=examples / times.train_s,
      peak_rss_mb=records.peak_rss_mb(), device_memory_mb=records.device_memory_mb(devices),
      nonfinite_steps=totals.nonfinite_steps if count_nonfinite else None,
      readout_means={k: v for k, v in means.items() if k not in records.STEP_METRICS})


def on_replicas(launcher: step_lib.Launcher, fn: Callable) -> Callable:
  """`fn`, a pure function of replicated values, applied to the replicas under the launcher.

  The arguments and the result are replicated as `Launcher.put_state` places them: under pmap
  with a leading axis over this process's devices, under shard_map as global arrays replicated
  over the mesh. Each device computes `fn` on its own replica, so on several processes every
  process passes its own (equal) copy, as it does to the train step, and no value crosses hosts.
  """
  if launcher.parallel == "pmap":
    return jax.pmap(fn, axis_name=step_lib.AXIS, devices=launcher.devices)
  return jax.jit(jax.shard_map(fn, mesh=launcher.mesh, in_specs=P(), out_specs=P(),
                               check_vma=False))


def observer(launcher: step_lib.Launcher, observe_eval: Callable | None
             ) -> Callable[[Any, float], Any] | None:
  """`(state, val_loss) -> state` with the strategy's `observe_eval` applied to the replicated
  optimizer state (its own, inside `optax.apply_if_finite`'s); None for a strategy without it."""
  if observe_eval is None:
    return None
  mapped = on_replicas(launcher, lambda opt_state, loss: opt_state._replace(
      inner_state=observe_eval(opt_state.inner_state, loss)))

  def observe(state, val_loss: float):
    loss = launcher.put_state(np.float32(val_loss))
    return state._replace(opt_state=mapped(state.opt_state, loss))

  return observe


def _metric(metrics: dict[str, Any], name: str) -> float | None:
  """A step metric as a float; None where this step has no such metric."""
  return float(metrics[name]) if name in metrics else None


def itstime(step: int, every: int | None, last: bool = False) -> bool:
  """Whether a periodic action (log, evaluate, save) is due at global step `step`: at every
  multiple of `every` (never when it is None), and at `last`."""
  return last or (every is not None and step % every == 0)


@dataclasses.dataclass(frozen=True)
class Steps:
  """What a run does with its state; set once, before the first step.

  Attributes:
    train: `(state, batch, rng) -> (state, metrics)`, the launcher's step.
    evaluate: `(state, split) -> the split's metrics`.
    eval_view: `state -> the state to evaluate and save as final` (the strategy's eval params).
    observe_eval: `(state, val_loss) -> state`, the strategy's `observe_eval` (`observer`), or
      None.
  """
  train: Callable
  evaluate: Callable[[Any, str], dict[str, float]]
  eval_view: Callable[[Any], Any] = lambda state: state
  observe_eval: Callable[[Any, float], Any] | None = None


@dataclasses.dataclass
class Run:
  """A run in progress: its parts (`s`, the records, the checkpoints, the steps) and where it
  stands, which is what a checkpoint saves (with the data iterator's state and the clock)."""
  s: Any  # train.loop.Setup (that module imports this one)
  recorder: records.Recorder
  ckpts: checkpoint_lib.Checkpoints
  steps: Steps
  state: Any  # the TrainState, replicated
  rng: Any
  clock: clock_lib.Clock
  step: int = 0
  epochs_done: int = 0  # epochs whose rows are written
  sums: EpochSums = dataclasses.field(default_factory=EpochSums)  # of the unfinished epoch
  last_row: dict[str, Any] = dataclasses.field(default_factory=dict)
  data: Any = None  # the training iterator, while it is open
  batches: Iterator | None = None  # its batches, from the first one not trained on
  watch: checkpoint_lib.PreemptionWatch = dataclasses.field(
      default_factory=checkpoint_lib.PreemptionWatch)
  postfix: dict[str, str] = dataclasses.field(default_factory=dict)  # the progress bar's

  def compile(self, signals: dict[int, list[signal.Signals]]) -> float | None:
    """Compiles the step on the first batch, which then trains as usual; returns the seconds
    it took, or None when no epoch is left. Done before the training clock runs. The test-only
    `signals` wrap the compiled step (`with_test_signals`)."""
    if self.epochs_done >= self.s.config.epochs:
      return None
    first = next(self.data)
    t0 = time.perf_counter()
    compiled = self.s.launcher.compile(self.steps.train, self.state, first, self.rng)
    seconds = time.perf_counter() - t0
    self.steps = dataclasses.replace(
        self.steps, train=with_test_signals(compiled, signals, self.step))
    self.batches = itertools.chain([first], self.data)
    return seconds

  def save(self) -> None:
    """Checkpoints where the run stands; a step already saved is not saved again."""
    get = self.s.launcher.get
    key, layout = resume_lib.OPT_LAYOUT
    meta = {"epochs_done": self.epochs_done, "data": self.data.get_state(),
            "epoch_acc": self.sums.to_json(get), "last_row": self.last_row,
            "config": self.s.config.to_json(), "clock": self.clock.to_json(), key: layout}
    host = {"train": get(self.state), "rng": np.asarray(jax.random.key_data(self.rng))}
    self.ckpts.save(self.step, host, meta)

  def check_finite(self, epoch: int) -> None:
    """Raises before anything non-finite is saved; a host sync, done where one happens anyway."""
    get = self.s.launcher.get
    if self.s.config.skip_nonfinite:
      run = int(get(self.state.opt_state.notfinite_count))
      if run > MAX_CONSECUTIVE_NONFINITE:
        raise NonFiniteError(
            self.step - run + MAX_CONSECUTIVE_NONFINITE + 1, epoch,
            f"more than {MAX_CONSECUTIVE_NONFINITE} consecutive non-finite steps, so "
            "optax.apply_if_finite applied one; the state is no longer finite")
      return
    first = self.sums.first_nonfinite(get)
    if first:
      raise NonFiniteError(first, epoch, "the run stops (--skip-nonfinite skips such steps)")

  def write_steps(self, pending: list[tuple[int, Any]], epoch: int, bar: tqdm) -> None:
    get = self.s.launcher.get
    rows = [records.StepRow.from_metrics(step, epoch, get(m)) for step, m in pending]
    self.recorder.steps(rows)
    if rows:
      self.postfix.update(loss=f"{rows[-1].loss:.4f}", lr=f"{rows[-1].effective_lr:.2e}")
      bar.set_postfix(self.postfix)

  def validate(self) -> dict[str, float]:
    """The current state's metrics on the validation split (at the strategy's eval params)."""
    evaluation = self.steps.evaluate(self.steps.eval_view(self.state), "validation")
    self.postfix["val_loss"] = f"{evaluation['validation_loss']:.4f}"
    return evaluation

  def evaluated(self, epoch: int, last: dict[str, Any], evaluation: dict[str, float]) -> None:
    """After an evaluation at this step: its evals.jsonl row at a multiple of eval_every_steps,
    and the strategy's `observe_eval` on the evaluations it sees (see the module docstring).

    Args:
      epoch: the epoch of this step.
      last: this step's metrics (host).
      evaluation: `validate()` at this step.
    """
    every = self.s.config.eval_every_steps
    due = itstime(self.step, every)
    if due:
      clock = self.clock  # paused or stopped: the training time up to this step
      self.recorder.eval(records.EvalRow(
          step=self.step, epoch=epoch, examples=self.step * self.s.config.batch_size,
          train_time_s=clock.train_time_total + clock.epoch_train(),
          val_loss=evaluation["validation_loss"],
          val_accuracy=evaluation["validation_accuracy"],
          effective_lr=_metric(last, "effective_lr"),
          readouts={k: _metric(last, k) for k in self.s.strategy.spec.eval_readouts()}))
    if self.steps.observe_eval is not None and (due or every is None):
      self.state = self.steps.observe_eval(self.state, evaluation["validation_loss"])


def run_epoch(run: Run, epoch: int) -> str | None:
  """Trains, evaluates, records and checkpoints the rest of `epoch`.

  Returns:
    The signal that came at the epoch's last step, if any: the caller stops after this epoch.

  Raises:
    checkpoint.Preempted: a signal came at an earlier step; that step was saved.
    NonFiniteError: see `Run.check_finite`.
  """
  metrics, stop = _steps(run, epoch)
  _record(run, epoch, metrics)
  return stop


def _steps(run: Run, epoch: int) -> tuple[Any, str | None]:
  """The epoch's steps left, with their rows and the checkpoints due within the epoch."""
  config, steps_per_epoch = run.s.config, run.s.pipeline.steps_per_epoch
  begun = run.step - (epoch - 1) * steps_per_epoch  # > 0 when resumed mid-epoch
  pending, stop = [], None
  run.clock.start_epoch()
  bar = tqdm(range(begun, steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}",
             disable=config.quiet or jax.process_index() != 0, leave=False,
             dynamic_ncols=True, initial=begun, total=steps_per_epoch)
  for i in bar:
    run.state, metrics = run.steps.train(run.state, next(run.batches), run.rng)
    run.step += 1
    watchdog.beat(run.step)  # --collective-timeout
    run.sums.add(metrics, run.step)
    if itstime(run.step, config.log_every):
      pending.append((run.step, metrics))
    stop = run.watch.requested(run.step)
    # The epoch's last step is evaluated and saved after the epoch, in `_record`.
    last = i == steps_per_epoch - 1
    save = not last and itstime(run.step, config.checkpoint_every_steps, stop is not None)
    evaluate = not last and itstime(run.step, config.eval_every_steps)
    if save or last or evaluate or len(pending) >= _MAX_PENDING_ROWS:
      with run.clock.paused(wait_for=metrics):
        run.write_steps(pending, epoch, bar)
        pending = []
        run.check_finite(epoch)
        if evaluate:  # before the save, which then holds what observe_eval made of it
          run.evaluated(epoch, run.s.launcher.get(metrics), run.validate())
          bar.set_postfix(run.postfix)
        if save:
          run.save()
      if save and stop is not None:
        raise checkpoint_lib.Preempted(stop, run.step, epoch, run.ckpts.directory)
  return metrics, stop


def _record(run: Run, epoch: int, metrics) -> None:
  """Ends the epoch: evaluates it, writes its rows and checkpoints it."""
  s = run.s
  run.clock.end_epoch(wait_for=run.state)
  totals = run.sums.totals(s.launcher.get)
  last = s.launcher.get(metrics)
  evaluation = run.validate()
  run.evaluated(epoch, last, evaluation)  # its evals.jsonl row, and observe_eval
  row = epoch_row(epoch, run.step, totals, last, evaluation, run.clock.last_epoch(),
                  examples=s.pipeline.steps_per_epoch * s.config.batch_size,
                  devices=s.devices, count_nonfinite=s.config.skip_nonfinite)
  run.recorder.epoch(row)
  if not s.config.quiet and jax.process_index() == 0:
    tqdm.write(f"epoch {epoch}: train_loss {row.train_loss:.4f} val_loss "
               f"{row.val_loss:.4f} val_acc {row.val_accuracy:.4f} lr "
               f"{row.effective_lr:.2e} ({row.train_time_s:.1f}s)")
  # The checkpoint keeps the row as its JSON object, as epochs.jsonl has it.
  run.last_row, run.epochs_done, run.sums = row.as_dict(), epoch, EpochSums()
  run.save()

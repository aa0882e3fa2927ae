"""The run's clocks (`train.clock`), the epoch sums and row (`train.epoch`), and the signal hook.

The loop's clocks are checked on a real run with a fake time that jumps: each step, step-row
write, checkpoint save and evaluation moves the wall and CPU clocks on by its own power of ten,
so each record's times say exactly which of them it counted.
"""

import functools
import signal
import time

import jax.numpy as jnp
import numpy as np
import pytest
from test_resume import jsonl
from test_resume import last_checkpoint

from train import checkpoint
from train import clock as clock_lib
from train import config as config_lib
from train import epoch as epoch_lib
from train import loop
from train import records

EPOCH_FIELDS = [  # in the order of today's rows
    "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "effective_lr",
    "effective_lr_mean", "train_time_s", "train_time_total_s", "elapsed_s", "cpu_time_s",
    "examples_per_s", "peak_rss_mb", "device_memory_mb", "readout_means"]


class FakeTime:
  """Wall and CPU reads that `advance` moves on by hand."""

  def __init__(self):
    self.wall_s = self.cpu_s = 0.0

  def wall(self) -> float:
    return self.wall_s

  def cpu(self) -> float:
    return self.cpu_s

  def advance(self, seconds: float, cpu: float | None = None) -> None:
    self.wall_s += seconds
    self.cpu_s += seconds if cpu is None else cpu


def _clock(fake, saved=None) -> clock_lib.Clock:
  return clock_lib.Clock(saved, wall=fake.wall, cpu=fake.cpu)


def test_training_clock_counts_only_the_steps_and_the_wall_clock_everything():
  fake = FakeTime()
  clock = _clock(fake)
  fake.advance(100.0)  # compilation, before the first epoch
  clock.start_epoch()
  fake.advance(2.0)
  with clock.paused():
    fake.advance(30.0)  # step rows and a checkpoint: CPU counted, training clock stopped
  fake.advance(3.0, cpu=1.0)
  assert clock.epoch_train() == 5.0 and clock.epoch_cpu() == 33.0
  clock.end_epoch()
  fake.advance(400.0)  # evaluation: the epoch's clocks are stopped
  assert clock.last_epoch() == clock_lib.EpochTime(
      train_s=5.0, train_total_s=5.0, cpu_s=33.0, elapsed_s=535.0)
  assert clock.to_json() == {"train_time_total": 5.0, "epoch_train": 0.0, "epoch_cpu": 0.0,
                             "elapsed": 535.0}
  clock.start_epoch()
  fake.advance(7.0)
  clock.end_epoch()
  assert clock.last_epoch() == clock_lib.EpochTime(7.0, 12.0, 7.0, 542.0)


def test_a_clock_restored_from_its_json_goes_on_where_it_was():
  fake = FakeTime()
  clock = _clock(fake, {"train_time_total": 5.0, "epoch_train": 0.0, "epoch_cpu": 0.0,
                        "elapsed": 50.0})
  clock.start_epoch()
  fake.advance(4.0)
  with clock.paused():  # a mid-epoch checkpoint saves the clock as it stands
    saved = clock.to_json()
  assert saved == {"train_time_total": 5.0, "epoch_train": 4.0, "epoch_cpu": 4.0,
                   "elapsed": 54.0}
  fake.advance(1000.0)  # killed, restarted: the time in between counts nowhere
  resumed = _clock(fake, saved)
  assert resumed.to_json() == saved
  resumed.start_epoch()
  fake.advance(2.0)
  resumed.end_epoch()
  assert resumed.last_epoch() == clock_lib.EpochTime(6.0, 11.0, 6.0, 56.0)


def test_the_clock_meta_of_checkpoints_before_the_clock_object_still_restores():
  # The "clock" meta as the loop wrote it before `Clock` existed (same keys, same meanings), at a
  # mid-epoch checkpoint (values exact in binary, so that sums compare exactly).
  old = {"train_time_total": 0.75, "epoch_train": 0.015625, "epoch_cpu": 0.03125,
         "elapsed": 15.0625}
  fake = FakeTime()
  clock = _clock(fake, old)
  assert clock.to_json() == old
  clock.start_epoch()
  fake.advance(1.0)
  clock.end_epoch()
  assert clock.last_epoch() == clock_lib.EpochTime(1.015625, 1.765625, 1.03125, 16.0625)


def test_a_bad_saved_clock_or_misuse_fails_clearly():
  with pytest.raises(ValueError, match="clock: the saved clock lacks epoch_cpu, elapsed"):
    clock_lib.Clock({"train_time_total": 1.0, "epoch_train": 0.0})
  clock = _clock(FakeTime())
  with pytest.raises(RuntimeError, match="paused while the training clock is stopped"):
    with clock.paused():
      pass
  with pytest.raises(RuntimeError, match="last_epoch before any end_epoch"):
    clock.last_epoch()
  clock.start_epoch()
  with pytest.raises(RuntimeError, match="start_epoch while the training clock runs"):
    clock.start_epoch()


def test_pause_waits_for_the_steps_before_stopping_the_clock(monkeypatch):
  waited = []
  monkeypatch.setattr(clock_lib.jax, "block_until_ready", waited.append)
  clock = _clock(FakeTime())
  clock.start_epoch()
  with clock.paused(wait_for="metrics"):
    pass
  clock.end_epoch(wait_for="state")
  assert waited == ["metrics", "state"]


def _metrics(loss, grad_norm=1.0):
  return {"loss": jnp.float32(loss), "accuracy": jnp.float32(0.5),
          "grad_norm": jnp.float32(grad_norm), "effective_lr": jnp.float32(1e-3),
          "lr_scale": jnp.float32(1.0), "variability": jnp.float32(0.1)}


def test_epoch_sums_count_nonfinite_steps_and_round_trip_through_json_exactly():
  get = lambda tree: tree  # one device: the tree is its own replica
  sums = epoch_lib.EpochSums()
  assert sums.to_json(get) is None
  for step, loss in enumerate([0.1, 0.7, float("nan"), 0.3], start=1):
    sums.add(_metrics(loss), step)
  totals = sums.totals(get)
  assert (totals.finite_steps, totals.nonfinite_steps, totals.first_nonfinite) == (3, 1, 3)
  assert sums.first_nonfinite(get) == 3
  assert totals.sums["loss"] == float(np.float32(0.1) + np.float32(0.7) + np.float32(0.3))
  # A resumed epoch goes on from the JSON as if it had never stopped, bit for bit.
  resumed = epoch_lib.EpochSums.from_json(sums.to_json(get))
  for s in (sums, resumed):
    s.add(_metrics(0.2, grad_norm=float("inf")), 5)
    s.add(_metrics(0.9), 6)
  assert resumed.totals(get) == sums.totals(get)
  final = sums.totals(get)
  assert (final.finite_steps, final.nonfinite_steps, final.first_nonfinite) == (4, 2, 3)
  assert final.means()["loss"] == final.sums["loss"] / 4


def test_epoch_row_has_exactly_the_record_fields():
  totals = epoch_lib.EpochTotals(
      # The step's metrics, as a run without gns has them (its noise_to_signal is NaN, so the
      # row leaves its mean out).
      sums={**{k: 2.0 for k in ("loss", "accuracy", "effective_lr", "lr_scale", "variability")},
            "noise_to_signal": float("nan")},
      finite_steps=4, nonfinite_steps=1, first_nonfinite=3)
  args = dict(epoch=2, step=16, totals=totals, last={"effective_lr": 1e-3, "lr_scale": 0.5},
              evaluation={"validation_loss": 0.4, "validation_accuracy": 0.8},
              times=clock_lib.EpochTime(4.0, 9.0, 3.0, 20.0), examples=64, devices=[])
  row = epoch_lib.epoch_row(**args, count_nonfinite=False).as_dict()
  assert list(row) == EPOCH_FIELDS
  assert (row["train_loss"], row["train_time_s"], row["train_time_total_s"], row["elapsed_s"],
          row["cpu_time_s"], row["examples_per_s"]) == (0.5, 4.0, 9.0, 20.0, 3.0, 16.0)
  assert list(epoch_lib.epoch_row(**args, count_nonfinite=True).as_dict()) == (
      EPOCH_FIELDS[:-1] + ["nonfinite_steps", "readout_means"])
  # The readouts' means, without the one that has no value (NaN).
  assert row["readout_means"] == {"lr_scale": 0.5, "variability": 0.5}
  no_finite = epoch_lib.EpochTotals(totals.sums, 0, 5, 1)
  assert np.isnan(epoch_lib.epoch_row(**{**args, "totals": no_finite},
                                      count_nonfinite=True).train_loss)


def test_the_test_signal_hook_parses_its_syntax_and_names_itself_on_errors():
  parse = epoch_lib.parse_test_signals
  assert parse(None) == parse("") == {}
  assert parse("SIGTERM@12") == {12: [signal.SIGTERM]}
  assert parse("SIGINT@5,SIGINT@5") == {5: [signal.SIGINT, signal.SIGINT]}
  assert parse("SIGKILL@4, SIGTERM@9") == {4: [signal.SIGKILL], 9: [signal.SIGTERM]}
  for bad in ("SIGTERM", "SIGTERM@", "TERM@3", "SIGNOPE@3", "SIGTERM@0", "SIGTERM@x", "@4"):
    with pytest.raises(ValueError, match=f"GRADVAR_TEST_SIGNALS: '{bad}' is not SIGNAL@STEP"):
      parse(bad)


# What each call moves the fake wall and CPU clocks on by (seconds), and how much real time a
# record may add to them (compilation included).
STEP, ROWS, SAVE, EVAL = 1e3, 1e5, 1e7, 1e9
SLACK = 500.0


def _about(value: float, fake: float) -> bool:
  return fake - 1e-3 <= value < fake + SLACK


@pytest.mark.slow
def test_the_loop_keeps_evaluation_logging_and_saves_off_the_training_clock_across_a_resume(
    tmp_path, data_dir, monkeypatch):
  jumped = [0.0]

  def jumping(seconds, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      jumped[0] += seconds
      return fn(*args, **kwargs)
    return wrapper

  monkeypatch.setattr(clock_lib, "Clock", functools.partial(
      clock_lib.Clock, wall=lambda: time.perf_counter() + jumped[0],
      cpu=lambda: time.process_time() + jumped[0]))
  monkeypatch.setattr(epoch_lib.EpochSums, "add", jumping(STEP, epoch_lib.EpochSums.add))
  monkeypatch.setattr(records.Recorder, "steps", jumping(ROWS, records.Recorder.steps))
  monkeypatch.setattr(checkpoint.Checkpoints, "save", jumping(SAVE, checkpoint.Checkpoints.save))
  monkeypatch.setattr(loop, "evaluate", jumping(EVAL, loop.evaluate))
  config = config_lib.Config(
      task="rt_sentiment", workdir=str(tmp_path / "run"), strategy="gradvar", model_size="tiny",
      epochs=2, batch_size=8, num_devices=2, train_examples=64, eval_examples=16, log_every=1,
      quiet=True, cache_dir=str(tmp_path / "cache"), data_dir=str(data_dir),
      checkpoint_every_steps=3)
  # 2 epochs of 8 steps, rows written at every checkpoint and epoch end, checkpoints every 3
  # steps; stopped by SIGTERM at step 5 (written and saved there), then resumed.
  monkeypatch.setenv("GRADVAR_TEST_SIGNALS", "SIGTERM@5")
  with pytest.raises(checkpoint.Preempted, match="SIGTERM: saved a checkpoint at step 5"):
    loop.train(config)
  step, _, meta = last_checkpoint(config.workdir)
  clock = meta["clock"]
  # Steps 1-5 on the training clock; rows (steps 3, 5) and checkpoint 3 on the CPU's.
  assert step == 5 and clock["train_time_total"] == 0.0
  assert _about(clock["epoch_train"], 5 * STEP)
  assert _about(clock["epoch_cpu"], 5 * STEP + 2 * ROWS + SAVE)
  assert _about(clock["elapsed"], 5 * STEP + 2 * ROWS + SAVE)
  monkeypatch.delenv("GRADVAR_TEST_SIGNALS")
  loop.train(config, resume=True)

  first, second = jsonl(tmp_path / "run" / "epochs.jsonl")
  # Epoch 1, resumed: steps 6-8 after 1-5; rows at 6 and 8, checkpoint 6, then its evaluation.
  assert _about(first["train_time_s"], 8 * STEP)
  assert first["train_time_total_s"] == first["train_time_s"]
  assert first["examples_per_s"] == 64 / first["train_time_s"]
  assert _about(first["cpu_time_s"], 8 * STEP + 4 * ROWS + 2 * SAVE)
  assert _about(first["elapsed_s"], 8 * STEP + 4 * ROWS + 2 * SAVE + EVAL)
  # Epoch 2: checkpoint 8 after epoch 1's record, steps 9-16, rows at 9, 12, 15 and 16,
  # checkpoints 9, 12 and 15, then its evaluation.
  assert _about(second["train_time_s"], 8 * STEP)
  assert second["train_time_total_s"] == first["train_time_s"] + second["train_time_s"]
  assert _about(second["cpu_time_s"], 8 * STEP + 4 * ROWS + 3 * SAVE)
  assert _about(second["elapsed_s"], 16 * STEP + 8 * ROWS + 6 * SAVE + 2 * EVAL)

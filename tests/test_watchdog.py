"""train.watchdog: a run whose steps stop making progress ends with an error (in this process,
with a stand-in for the exit; tests/test_multihost.py shows it on a stuck 2-process run)."""

import threading
import time

import pytest

from train import config as config_lib
from train import watchdog


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _dog(timeout_s=4.0):
  clock, stalls = FakeClock(), []
  fired = threading.Event()

  def on_stall(message):
    stalls.append(message)
    fired.set()

  dog = watchdog.Watchdog(timeout_s, process_index=1, clock=clock, on_stall=on_stall)
  return dog, clock, stalls, fired


def test_beats_keep_it_quiet_and_it_is_armed_by_the_first_one():
  dog, clock, stalls, fired = _dog()
  dog.start()
  try:
    clock.now = 100.0  # long before the first beat (compiling): not armed yet
    assert not fired.wait(1.5)
    for step in range(1, 6):
      dog.beat(step)
      clock.now += 3.0  # under the timeout between beats
      assert not fired.wait(1.1)
  finally:
    dog.stop()
  assert stalls == []


def _blocked_in_a_wait(event):
  event.wait()  # the main thread's stand-in for a collective that never completes


def test_no_progress_for_the_timeout_names_the_step_and_the_operation():
  dog, clock, stalls, fired = _dog()
  dog._main = threading.current_thread()  # noqa: SLF001 - this thread plays the main thread
  release = threading.Event()
  dog.start()
  try:
    dog.beat(17)
    clock.now += 4.0

    def release_when_fired():
      fired.wait(30)
      release.set()

    threading.Thread(target=release_when_fired, daemon=True).start()
    _blocked_in_a_wait(release)
  finally:
    dog.stop()
  [message] = stalls
  assert ("process 1 made no progress for 4 s since it dispatched step 17 (--collective-timeout)"
          in message)
  # The operation: the innermost frame of this file, then the innermost of all.
  assert "test_watchdog.py" in message and "in _blocked_in_a_wait -> " in message
  assert "threading.py" in message and "in wait" in message


def test_watch_feeds_the_active_watchdog_and_none_means_none(monkeypatch):
  watchdog.beat(3)  # no watchdog: nothing happens
  with watchdog.watch(None) as dog:
    assert dog is None
  with watchdog.watch(60, process_index=0) as dog:
    watchdog.beat(5)
    assert dog._step == 5  # noqa: SLF001
  assert watchdog._active is None  # noqa: SLF001


def test_the_test_stall_blocks_only_the_named_process_at_its_step(monkeypatch):
  monkeypatch.setenv(watchdog.TEST_STALL_ENV, "0@2")
  other = watchdog.Watchdog(60, process_index=1, on_stall=lambda m: None)
  other.beat(2)  # another process: returns
  named = watchdog.Watchdog(60, process_index=0, on_stall=lambda m: None)
  named.beat(1)
  t = threading.Thread(target=named.beat, args=(2,), daemon=True)
  t.start()
  time.sleep(0.5)
  assert t.is_alive()  # blocked at its step, as a stuck peer would be
  monkeypatch.setenv(watchdog.TEST_STALL_ENV, "2")
  with pytest.raises(ValueError, match="GRADVAR_TEST_STALL: expected PROCESS@STEP"):
    watchdog.Watchdog(60)


@pytest.mark.parametrize("value", [0, -5])
def test_bad_timeouts_are_refused(value):
  with pytest.raises(ValueError, match="timeout_s: must be positive"):
    watchdog.Watchdog(value)
  config = config_lib.Config(task="rt_sentiment", workdir="w", collective_timeout_s=value)
  with pytest.raises(ValueError, match="config.collective_timeout_s: must be a positive int"):
    config_lib.validate(config)


def test_the_flag_sets_the_field():
  from train import __main__ as cli
  args = cli.parser().parse_args(["--task", "rt_sentiment", "--workdir", "w",
                                  "--collective-timeout", "30"])
  assert cli.config_from_args(args).collective_timeout_s == 30
  field = config_lib.FIELDS["collective_timeout_s"]
  assert not field.metadata["trajectory"] and not field.metadata["records"]


def test_native_stacks_of_a_process_name_its_frames(tmp_path):
  import subprocess
  import sys
  proc = subprocess.Popen([sys.executable, "-c", "import time\ndef parked():\n  time.sleep(60)\n"
                           "parked()"])
  try:
    time.sleep(2)
    files = watchdog.native_stacks({"child": proc.pid}, str(tmp_path))
  finally:
    proc.kill()
    proc.wait()
  spied = tmp_path / "child.py-spy.txt"
  assert str(spied) in files  # py-spy comes with the test extra
  assert "parked" in spied.read_text()


@pytest.mark.slow
def test_the_test_evaluation_and_the_final_save_run_under_the_watchdog(tmp_path, data_dir,
                                                                       monkeypatch):
  # A stall there (a collective that a peer never joins) must end the run as a stall in a step
  # does, not hang it: `_finish` runs inside the watchdog's block, after a beat of its own.
  from train import loop
  seen = []
  finish = loop._finish  # noqa: SLF001

  def watched(run, workdir, run_info):
    dog = watchdog._active  # noqa: SLF001
    seen.append((dog is not None, run.step, dog and dog._step))  # noqa: SLF001
    return finish(run, workdir, run_info)

  monkeypatch.setattr(loop, "_finish", watched)
  config = config_lib.Config(
      task="rt_sentiment", workdir=str(tmp_path / "run"), model_size="tiny", epochs=1,
      batch_size=8, num_devices=1, train_examples=32, eval_examples=8, quiet=True,
      cache_dir=str(tmp_path / "cache"), data_dir=str(data_dir), collective_timeout_s=600)
  result = loop.train(config)
  assert seen == [(True, 4, 4)]  # 32 examples in batches of 8
  assert "test_loss" in result and (tmp_path / "run" / "final").exists()
  assert watchdog._active is None  # noqa: SLF001

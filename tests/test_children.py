"""benchmarks.children: a stop that comes while a child run starts cannot orphan it."""

import json
import signal
import subprocess

import pytest

from benchmarks import children
from benchmarks import compare
from benchmarks import suite as suite_lib

SUITE = """\
name = "t"
seeds = [0]
strategies = ["fixed"]
epochs = 1
[defaults]
model_size = "tiny"
[tasks.rt_sentiment]
train_examples = 48
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])  # Ctrl-C: KeyboardInterrupt
def test_a_stop_inside_popen_after_the_fork_stops_the_child(tmp_path, monkeypatch, signum):
  run = suite_lib.parse(SUITE).run("rt_sentiment", "fixed", 0)
  real, started = subprocess.Popen, []

  def popen(*args, **kwargs):
    # The child exists (forked and exec'd); the signal comes before Popen() returns.
    proc = real(*args, **kwargs)
    started.append(proc)
    signal.raise_signal(signum)
    return proc

  monkeypatch.setattr(subprocess, "Popen", popen)
  # Ctrl-C as a terminal delivers it: Python's own SIGINT handler (KeyboardInterrupt), whatever
  # the worker inherited (a background job starts with SIGINT ignored). The runner sets SIGTERM's.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(compare.Interrupted):
      compare.run_all([run], tmp_path, None, progress=False)
    [proc] = started
    # The runner knew the child, stopped it and waited for it before it raised.
    assert proc.returncode is not None
    attempts = json.loads((tmp_path / run.relpath() / "bench.json").read_text())["attempts"]
    assert attempts[-1]["interrupted"] and attempts[-1]["rc"] == proc.returncode
  finally:
    signal.signal(signal.SIGINT, previous)
    for proc in started:
      if proc.poll() is None:  # orphaned: stop it here so that the test leaves nothing behind
        proc.kill()
        proc.wait()


def test_deferred_signals_are_delivered_once_after_the_block_with_the_old_handlers():
  got = []
  previous = signal.signal(signal.SIGUSR1, lambda s, f: got.append(("old", s)))
  try:
    with children.deferred_signals((signal.SIGUSR1,)):
      signal.raise_signal(signal.SIGUSR1)
      signal.raise_signal(signal.SIGUSR1)
      assert got == []
    assert got == [("old", signal.SIGUSR1)]
  finally:
    signal.signal(signal.SIGUSR1, previous)

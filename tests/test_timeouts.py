"""pytest-timeout's signal method fails one stalled test and the run goes on; a stall that never
returns to Python meets the backstop (tests/timeout_backstop.py), which dumps every thread's stack
and ends the process."""

import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent

CONFTEST = f"""\
import sys
sys.path.insert(0, {str(TESTS)!r})
from timeout_backstop import pytest_addoption, pytest_timeout_cancel_timer, \\
    pytest_timeout_set_timer
"""

TESTS_FILE = """\
import signal
import time


def test_a_hang_in_python():
  time.sleep(60)


def test_after_it():
  assert True


def test_a_stall_that_never_runs_the_handler():
  # SIGALRM blocked: as when the main thread waits inside C++ and never returns to Python.
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
  time.sleep(60)


def test_never_reached():
  assert True
"""


def _pytest(tmp_path, *args):
  (tmp_path / "pytest.ini").write_text(
      "[pytest]\ntimeout = 2\ntimeout_method = signal\ntimeout_backstop_grace = 3\n")
  (tmp_path / "conftest.py").write_text(CONFTEST)
  (tmp_path / "test_stalls.py").write_text(TESTS_FILE)
  return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "test_stalls.py", *args], cwd=tmp_path, capture_output=True, text=True,
                        timeout=120)


def test_the_project_uses_the_signal_method_with_the_backstop(pytestconfig):
  assert pytestconfig.getini("timeout_method") == "signal"
  assert float(pytestconfig.getini("timeout_backstop_grace")) > 0


def test_one_hang_fails_one_test_and_the_run_goes_on(tmp_path):
  out = _pytest(tmp_path, "-k", "hang_in_python or after_it")
  assert out.returncode == 1, out.stdout + out.stderr
  assert "1 failed, 1 passed" in out.stdout
  assert "FAILED test_stalls.py::test_a_hang_in_python - Failed: Timeout" in out.stdout


def test_a_stall_outside_python_ends_the_process_with_every_stack(tmp_path):
  out = _pytest(tmp_path, "-k", "never_runs or never_reached")
  assert out.returncode == 1, out.stdout + out.stderr
  assert "Timeout (0:00:05)!" in out.stderr  # the timeout (2 s) plus the grace (3 s)
  assert "test_a_stall_that_never_runs_the_handler" in out.stderr  # the stalled thread's stack
  assert "passed" not in out.stdout  # the process ended there: the next test never ran

"""A backstop under pytest-timeout's signal method (hooks that tests/conftest.py takes in).

pyproject.toml sets `timeout_method = "signal"`: on a timeout SIGALRM raises in the test, which
fails that test alone and the run goes on (the thread method ends the whole pytest process).
A signal handler runs only when the main thread returns to Python, though, and a stall inside
C++ (XLA, gloo) may never do so. For that case each test that gets a signal timer also gets
`faulthandler.dump_traceback_later` at its timeout plus `timeout_backstop_grace` seconds: every
thread's stack to stderr, then the process exits, as the thread method would have done at once.
"""

import faulthandler
import sys
import threading

from _pytest import faulthandler as pytest_faulthandler
import pytest

GRACE_S = 60


def pytest_addoption(parser):
  parser.addini("timeout_backstop_grace", "seconds after a test's signal-method timeout at "
                "which, if the test still runs, every thread's stack is dumped and the process "
                f"exits (default {GRACE_S})", default=str(GRACE_S))


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
  # Returns None, so that pytest-timeout's own implementation still sets its timer.
  if settings.method == "signal" and threading.current_thread() is threading.main_thread():
    grace = float(item.config.getini("timeout_backstop_grace"))
    # Not fd 2 itself, which pytest's capture may hold (and lose with the process): the copy of
    # the real stderr that pytest's own faulthandler plugin keeps.
    out = item.config.stash.get(pytest_faulthandler.fault_handler_stderr_fd_key, sys.__stderr__)
    faulthandler.dump_traceback_later(settings.timeout + grace, exit=True, file=out)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item):
  del item
  faulthandler.cancel_dump_traceback_later()

"""Test configuration shared by every test module.

Eight host CPU devices let the pmap/shard_map tests run on a 2-core machine. The flag must be
set before jax initialises its backends, hence here, before any test module imports jax.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import warnings  # noqa: E402

from _pytest import _io  # noqa: E402
import hypothesis  # noqa: E402
import pytest  # noqa: E402

# pytest-timeout's signal method, with a backstop for a stall that never returns to Python.
from timeout_backstop import pytest_addoption  # noqa: E402, F401
from timeout_backstop import pytest_timeout_cancel_timer  # noqa: E402, F401
from timeout_backstop import pytest_timeout_set_timer  # noqa: E402, F401

# Hypothesis draws the same examples on every run, so a failure reproduces; no example database
# carries failures over between runs either. HYPOTHESIS_PROFILE=explore draws fresh ones.
hypothesis.settings.register_profile("derandomized", derandomize=True, database=None,
                                     print_blob=True)
hypothesis.settings.register_profile("explore")
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


# The project's own stand-in data sets (data/README.md); GRADVAR_DATA_DIR overrides them, as it
# does for train.data.get_source.
PROJECT_DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The real stand-in data sets: $GRADVAR_DATA_DIR if set, else the project's data/.

  Tests that need them fail with a clear message when the folder is missing; they never skip.
  """
  value = os.environ.get("GRADVAR_DATA_DIR")
  path = pathlib.Path(value) if value else PROJECT_DATA_DIR
  if not path.is_dir():
    given = f"GRADVAR_DATA_DIR={value!r}" if value else "the project's data folder"
    pytest.fail(f"{given} ({path}) is not a directory; it should hold the stand-in data sets "
                "(see data/README.md).", pytrace=False)
  return path


# A slow test's own bound (pyproject's `timeout` is for the others); an explicit
# @pytest.mark.timeout wins.
SLOW_TIMEOUT_S = 1800


# The longest test files (from `make test`'s --durations), started first: under `--dist loadfile
# --no-loadscope-reorder` the workers take files in collection order, and a long file started
# last runs alone at the end.
FIRST_FILES = ("test_v2_pipeline.py", "test_multihost.py", "test_resume.py", "test_train.py",
               "test_gns_suite.py", "test_bench_compare.py", "test_faults.py",
               "test_gradvar_gns.py")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
      item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
  # A stable sort: each file's tests keep their order, the files not listed theirs.
  rank = {name: i for i, name in enumerate(FIRST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(FIRST_FILES)))


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
  # In a pytest-xdist worker (`make test`) stdout is /dev/null: pytest-timeout would write its
  # report of a stalled test (every thread's stack) there. The worker's stderr is the console's.
  # The signal method fails the stalled test alone; only the backstop (tests/timeout_backstop.py)
  # ends a worker, and the Makefile's --max-worker-restart=0 then ends the run (under --dist
  # loadfile, xdist 3.8 would rerun the stalled test in each replacement worker).
  if hasattr(config, "workerinput"):
    console = _io.TerminalWriter(sys.__stderr__)
    config.get_terminal_writer = lambda: console


# The stop signals' handlers, as a test found them. A test that leaves another handler behind
# (an in-process run stopped inside its signal watch, a library's own) would change what the next
# test in the same worker meets: test_children's Ctrl-C case then sees no KeyboardInterrupt. The
# handlers are put back after every test, and a test that changed them is named in a warning.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _stop_signal_handlers_restored(request):
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  before = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
  yield
  for s, handler in before.items():
    now = signal.getsignal(s)
    if now is not handler:
      signal.signal(s, handler)
      warnings.warn(f"{request.node.nodeid} left {signal.Signals(s).name}'s handler at {now!r} "
                    f"(found {handler!r}); put back", RuntimeWarning, stacklevel=1)

"""A watchdog that turns a stalled run into an error (`--collective-timeout S`).

A multi-host run whose collective never completes (a peer that waits elsewhere, a transport that
lost a message) hangs every process without a word: the heartbeats of `jax.distributed` come from
a thread of their own and keep a live but stuck process looking healthy. Under a watchdog the
training loop reports progress once per step (`beat`); when `timeout_s` pass without one, the
watchdog's thread writes which step the process was at and where its main thread waits (the
operation: the innermost frames of the project and of the library that blocks), dumps every
thread's stack, and ends the process with `EXIT_CODE`. Every process of a stuck run runs its own
watchdog, so each ends the same way; one whose peer ended first sees its collective fail, or its
peer's heartbeats stop.

The main thread may be blocked inside C++ (XLA, gloo) where no Python signal handler can run, so
the watchdog ends the process itself (`os._exit`), after flushing what it wrote.

The timeout must exceed the longest step, evaluation or checkpoint save; the watchdog is armed by
the first step's beat, after compiling, and an evaluation or a save counts as part of the step
before it.
"""

import contextlib
import faulthandler
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback

# The exit status of a process that the watchdog ended (EX_SOFTWARE).
EXIT_CODE = 70
# A folder: before it exits, the watchdog also writes the native stacks of every thread of this
# process there (`native_stacks`: py-spy and gdb, where installed), C++ frames of XLA and gloo
# included, which faulthandler's Python stacks do not show.
DUMP_DIR_ENV = "GRADVAR_STALL_DUMP_DIR"
# Test-only: "PROCESS@STEP": that process blocks (in Python, forever) after that step's beat, as a
# peer stuck elsewhere would, so that the other processes wait in their next collective.
TEST_STALL_ENV = "GRADVAR_TEST_STALL"

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
_active: "Watchdog | None" = None


class Watchdog:
  """Ends this process when `beat` has not been called for `timeout_s` seconds once armed."""

  def __init__(self, timeout_s: float, process_index: int = 0, clock=time.monotonic,
               on_stall=None):
    if not timeout_s > 0:
      raise ValueError(f"timeout_s: must be positive, got {timeout_s!r}")
    self.timeout_s = timeout_s
    self.process_index = process_index
    self._clock = clock
    self._on_stall = on_stall or _end_process
    self._last: float | None = None  # the time of the last beat; None until the first
    self._step: int | None = None
    self._stop = threading.Event()
    self._main = threading.main_thread()
    self._thread = threading.Thread(target=self._watch, name="train-watchdog", daemon=True)
    self._stall_at = _test_stall(os.environ.get(TEST_STALL_ENV), process_index)

  def start(self) -> "Watchdog":
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()

  def beat(self, step: int) -> None:
    """This process has dispatched `step`; the time without progress starts again."""
    self._last, self._step = self._clock(), step
    if self._stall_at is not None and step == self._stall_at:
      threading.Event().wait()  # the test's stuck process: never returns

  def _watch(self) -> None:
    while not self._stop.wait(min(1.0, self.timeout_s / 4)):
      last = self._last
      if last is not None and self._clock() - last >= self.timeout_s:
        self._on_stall(self.message())
        return

  def message(self) -> str:
    """What the stall report says: the step, how long, and the operation the main thread is in."""
    frames = sys._current_frames().get(self._main.ident)
    where = operation(frames) if frames is not None else "unknown (no main thread)"
    return (f"error: collective timeout: process {self.process_index} made no progress for "
            f"{self.timeout_s:g} s since it dispatched step {self._step} "
            f"(--collective-timeout); its main thread waits in {where}. Steps run ahead of the "
            "host up to its next sync, so the stuck one is this step or one shortly before. A "
            "collective that a process never joined, or a peer stuck elsewhere, stalls every "
            "process of the run; each ends with this error or with its peer's.")


def operation(frame) -> str:
  """The innermost frame of the project's own code and the innermost frame of all, e.g.
  `train/epoch.py:281 in write_steps -> jax/_src/array.py:650 in _value`."""
  stack = traceback.extract_stack(frame)

  def ours(entry) -> bool:
    path = os.path.abspath(entry.filename)
    return path.startswith(_ROOT + os.sep) and "site-packages" not in path

  def short(entry) -> str:
    path = os.path.abspath(entry.filename)
    if ours(entry):
      name = os.path.relpath(path, _ROOT)
    else:
      name = path.split("site-packages" + os.sep, 1)[-1]
    return f"{name}:{entry.lineno} in {entry.name}"

  if not stack:
    return "?"
  mine = [e for e in stack if ours(e)]
  if mine and mine[-1] is not stack[-1]:
    return f"{short(mine[-1])} -> {short(stack[-1])}"
  return short(stack[-1])


def native_stacks(pids: dict[str, int], folder: str) -> list[str]:
  """Every thread's native stack of each process `pids[name]`, into `folder`: `NAME.py-spy.txt`
  (`py-spy dump --native`: the Python threads, with their C++ frames) and `NAME.gdb.txt` (gdb's
  `thread apply all bt`: every thread, XLA's and gloo's too), for the tools installed. The
  processes are dumped at once: each is paused while dumped, and a coordinator paused for longer
  than the heartbeat timeout ends the run. Returns the files written."""
  tools = {}
  spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
  spy = spy if os.path.exists(spy) else shutil.which("py-spy")
  if spy:
    tools["py-spy"] = lambda pid: [spy, "dump", "--native", "--pid", str(pid)]
  gdb = shutil.which("gdb")
  if gdb:
    tools["gdb"] = lambda pid: [gdb, "-p", str(pid), "-batch", "-nx", "-ex",
                                "thread apply all bt"]
  os.makedirs(folder, exist_ok=True)
  running, written = [], []
  for tool, argv in tools.items():
    for name, pid in pids.items():
      path = os.path.join(folder, f"{name}.{tool}.txt")
      out = open(path, "w")  # noqa: SIM115 - closed below, once the dump is done
      running.append((subprocess.Popen(argv(pid), stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL), out, path))
    for proc, out, path in running:
      try:
        proc.wait(timeout=90)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
      out.close()
      written.append(path)
    running = []
  return written


def _end_process(message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
  folder = os.environ.get(DUMP_DIR_ENV)
  if folder:
    # Last: a dump pauses this process, and if it hosts the coordinator for longer than the
    # heartbeat timeout, jax's error handler may end the run (SIGABRT) before the exit below.
    files = native_stacks({f"process{os.getpid()}": os.getpid()}, folder)
    print(f"native stacks: {', '.join(files) or 'none (neither py-spy nor gdb is installed)'}",
          file=sys.stderr, flush=True)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(EXIT_CODE)


def _test_stall(value: str | None, process_index: int) -> int | None:
  if not value:
    return None
  process, at, step = value.partition("@")
  if not at or not process.isdigit() or not step.isdigit():
    raise ValueError(f"{TEST_STALL_ENV}: expected PROCESS@STEP, got {value!r}")
  return int(step) if int(process) == process_index else None


@contextlib.contextmanager
def watch(timeout_s: float | None, process_index: int = 0):
  """Runs the block under a watchdog of `timeout_s` (None: none), which `beat` feeds."""
  global _active
  if timeout_s is None:
    yield None
    return
  dog = Watchdog(timeout_s, process_index).start()
  previous, _active = _active, dog
  try:
    yield dog
  finally:
    _active = previous
    dog.stop()


def beat(step: int) -> None:
  """Progress at `step`, for the watchdog of the enclosing `watch` (none: nothing)."""
  if _active is not None:
    _active.beat(step)

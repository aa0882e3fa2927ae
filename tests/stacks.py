"""Every thread's stack of every process of a stalled multi-process test, kept as artifacts.

A test that starts `jax.distributed` processes calls `dump_stacks` when they overrun its bound,
before it kills them. For each process, into `folder`:

- `stack_I.py-spy.txt` and `stack_I.gdb.txt` (`train.watchdog.native_stacks`): `py-spy dump
  --native` (the test extra installs it) gives the Python threads with their C++ frames; gdb, where
  installed, every thread (XLA's and gloo's too), which is where a stalled collective waits;
- the process's own stderr log: with `PYTHONFAULTHANDLER=1` in its environment (`child_env`),
  the SIGABRT sent afterwards makes `faulthandler` write every Python thread's stack there; this
  one needs no ptrace permission.
"""

import pathlib
import signal
import subprocess
import time

from train import watchdog


def child_env(env: dict) -> dict:
  """`env` with faulthandler on, so that a SIGABRT dumps the child's Python stacks to stderr."""
  return {**env, "PYTHONFAULTHANDLER": "1"}


def dump_stacks(procs, folder: pathlib.Path) -> str:
  """Dumps the stacks of the `procs` (`Popen`s) still running, then kills them; a summary.

  Returns:
    A line naming `folder` and what it holds, for the test's failure message.
  """
  folder = pathlib.Path(folder)
  live = {f"stack_{i}": p.pid for i, p in enumerate(procs) if p.poll() is None}
  made = watchdog.native_stacks(live, str(folder)) if live else []
  for p in procs:  # faulthandler's Python stacks, into each child's stderr
    if p.poll() is None:
      p.send_signal(signal.SIGABRT)
  deadline = time.monotonic() + 10
  for p in procs:
    try:
      p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
  names = [pathlib.Path(m).name for m in made]
  dumped = f"native dumps {names}" if names else "no native dumps (neither py-spy nor gdb)"
  return (f"stacks of the stalled processes: {folder} ({dumped}; faulthandler's Python stacks "
          f"in each process's stderr log)")


def summarize(folder: pathlib.Path, lines: int = 60) -> str:
  """The head of each py-spy dump in `folder` (the full files stay there, gdb's too)."""
  parts = []
  for path in sorted(pathlib.Path(folder).glob("*.py-spy.txt")):
    text = path.read_text().splitlines()
    parts.append(f"--- {path.name}\n" + "\n".join(text[:lines]))
  return "\n".join(parts)


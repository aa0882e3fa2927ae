"""Every thread's stack of every process of a stalled multi-process test, kept as artifacts.

A test that starts `jax.distributed` processes calls `dump_stacks` when they overrun its bound,
before it kills them. Two dumps per process, into `folder`:

- `stack_I.txt`: `py-spy dump --native` (the test extra installs it): every thread, Python and
  C++ frames (gloo, XLA, gRPC), which is where a stalled collective waits;
- the process's own stderr log: with `PYTHONFAULTHANDLER=1` in its environment (`child_env`),
  the SIGABRT sent afterwards makes `faulthandler` write every Python thread's stack there; this
  one needs no ptrace permission.
"""

import pathlib
import shutil
import signal
import subprocess
import sys
import time


def child_env(env: dict) -> dict:
  """`env` with faulthandler on, so that a SIGABRT dumps the child's Python stacks to stderr."""
  return {**env, "PYTHONFAULTHANDLER": "1"}


def _py_spy() -> str | None:
  here = pathlib.Path(sys.executable).with_name("py-spy")
  return str(here) if here.exists() else shutil.which("py-spy")


def dump_stacks(procs, folder: pathlib.Path) -> str:
  """Dumps the stacks of the `procs` (`Popen`s) still running, then kills them; a summary.

  Returns:
    A line naming `folder` and what it holds, for the test's failure message.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  spy, made = _py_spy(), []
  for i, p in enumerate(procs):
    if p.poll() is not None:
      continue
    if spy:
      out = folder / f"stack_{i}.txt"
      try:
        r = subprocess.run([spy, "dump", "--native", "--pid", str(p.pid)], capture_output=True,
                           text=True, timeout=60)
        out.write_text(r.stdout + r.stderr)
      except subprocess.TimeoutExpired:
        out.write_text("py-spy dump did not return in 60 s\n")
      made.append(out.name)
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
  spied = f"py-spy dumps {made}" if made else "no py-spy dumps (py-spy not installed)"
  return (f"stacks of the stalled processes: {folder} ({spied}; faulthandler's Python stacks "
          f"in each process's stderr log)")


def summarize(folder: pathlib.Path, lines: int = 60) -> str:
  """The head of each py-spy dump in `folder` (the full files stay there)."""
  parts = []
  for path in sorted(pathlib.Path(folder).glob("stack_*.txt")):
    text = path.read_text().splitlines()
    parts.append(f"--- {path.name}\n" + "\n".join(text[:lines]))
  return "\n".join(parts)


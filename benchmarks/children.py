"""Starting a child run so that a stop from outside can never orphan it.

A SIGINT or SIGTERM whose handler raises (Ctrl-C's KeyboardInterrupt, the runner's
`Interrupted`) can arrive inside `subprocess.Popen()` after the fork: the exception then leaves
`Popen()` before it returns, the caller never learns the child's pid, and the child runs on
alone. `deferred_signals` holds those signals back while the child starts and its `Popen` is
stored, then delivers them, so the caller's cleanup finds the child and stops it.

Handlers are swapped, not signals blocked: a blocked mask would be inherited across fork and
exec, and the child would start deaf to SIGTERM.
"""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_signals(signals=SIGNALS):
  """Within the block, `signals` are noted instead of handled; on leaving it, the previous
  handlers come back and each noted signal is raised again, in order, once.

  Only the main thread can set handlers; elsewhere (where no handler runs anyway) the block runs
  as it is.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  noted: list[int] = []

  def note(signum, frame):
    del frame
    if signum not in noted:
      noted.append(signum)

  previous = {s: signal.signal(s, note) for s in signals}
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for s in noted:
      signal.raise_signal(s)  # the restored handler runs here, as it would have in the block

"""Test-only: signals raised in the training process itself after given steps (see `train.loop`).

The loop reads `GRADVAR_TEST_SIGNALS` once and, where it names any, wraps its compiled step
(`with_test_signals`); the loop's own code has no test hook.
"""

from collections.abc import Callable
import signal

TEST_SIGNALS_ENV = "GRADVAR_TEST_SIGNALS"


def parse_test_signals(value: str | None) -> dict[int, list[signal.Signals]]:
  """Parses `GRADVAR_TEST_SIGNALS` (test-only): `NAME@STEP[,NAME@STEP...]` -> {step: signals}."""
  out: dict[int, list[signal.Signals]] = {}
  for item in (value or "").split(","):
    if not item.strip():
      continue
    name, at, step = item.strip().partition("@")
    try:
      signum, step = signal.Signals[name], int(step)
    except (KeyError, ValueError):
      signum = step = None
    if not at or step is None or step < 1:
      raise ValueError(f"{TEST_SIGNALS_ENV}: {item!r} is not SIGNAL@STEP (a signal name such as "
                       f"SIGTERM and a step >= 1, comma-separated); got {value!r}")
    out.setdefault(step, []).append(signum)
  return out


def with_test_signals(p_train: Callable, signals: dict[int, list[signal.Signals]],
                      step: int) -> Callable:
  """`p_train` that raises `signals[k]` in-process right after global step k (test-only, see
  `train.loop`); the step itself, without a wrapper, when there are none.

  Args:
    p_train: the compiled step.
    signals: `parse_test_signals`'s.
    step: the global step the run starts from.
  """
  if not signals:
    return p_train
  done = [step]

  def train(*args):
    out = p_train(*args)
    done[0] += 1
    for signum in signals.get(done[0], ()):
      signal.raise_signal(signum)  # the handlers run here, as for a signal from outside
    return out

  return train

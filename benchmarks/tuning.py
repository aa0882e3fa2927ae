"""LR selection with bracketing: which LR each strategy is tuned to, from the tuning runs alone.

The rule (REPORT.md repeats it):

- A point's *score* is the mean over the tuning seeds of the best validation loss. A diverged run
  scores +inf, so it never wins; the *pick* is the lowest score, ties to the smaller LR.
- When the pick lies on an edge of the grid, one point is added beyond that edge, one log step
  out: the step is the ratio of the two points at that edge (for a log grid, the grid's own
  step). This repeats, one point at a time, up to the suite's `max_extensions`.
- A selection is `complete` when every point it needs has all its tuning runs finished. A pick
  still on an edge after the limit is reported as such (`on_edge`): the optimum may lie beyond.

The evaluation seeds take no part, so the selection does not leak into the comparison.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import math
import pathlib
import statistics
from typing import Optional

from benchmarks import metrics
from benchmarks import runs as runs_lib
from benchmarks import suite as suite_lib

# Extension points are rounded to this many significant digits, so that a run's LR (its folder
# name and its config) is a short, stable number rather than 9.000000000000001e-05.
SIGNIFICANT_DIGITS = 6


def point_score(values: Sequence[Optional[float]], states: Sequence[str]) -> Optional[float]:
  """A grid point's score: None while a run is missing, +inf if one diverged, else the mean."""
  if any(s == "missing" for s in states):
    return None
  if not values or any(s != "ok" for s in states) or not all(metrics.finite(v) for v in values):
    return math.inf
  return statistics.fmean(values)


def pick(scores: Mapping[float, Optional[float]]) -> float:
  """The LR of the lowest score (None counts as +inf); ties go to the smaller LR."""
  if not scores:
    raise ValueError("pick: no tuning results")
  return min(sorted(scores), key=lambda lr: math.inf if scores[lr] is None else scores[lr])


def beyond(grid: Sequence[float], lr: float) -> Optional[float]:
  """The next point beyond the edge that `lr` sits on, or None when `lr` is inside the grid."""
  points = sorted(grid)
  if len(points) < 2:
    raise ValueError(f"bracketing needs a grid of at least 2 points, got {list(grid)}")
  if lr == points[0]:
    value = points[0] / (points[1] / points[0])
  elif lr == points[-1]:
    value = points[-1] * (points[-1] / points[-2])
  else:
    return None
  return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


@dataclasses.dataclass(frozen=True)
class Bracket:
  """The walk of one (task, strategy): the points it needs so far and what they gave."""
  grid: tuple[float, ...]  # the initial grid as written, then each extension in order
  initial: tuple[float, ...]
  scores: dict  # lr -> score (None: a run is missing)
  pick: float  # over the points known so far; final only when `complete`
  complete: bool
  extensions: int  # points added beyond an edge
  max_extensions: int
  on_edge: bool  # the pick sits on an edge of the grid (when complete: after the limit)

  @property
  def missing(self) -> tuple[float, ...]:
    """The points whose tuning runs are not all finished: what to run next."""
    return tuple(lr for lr in self.grid if self.scores[lr] is None)


def bracket(initial: Sequence[float], score: Callable[[float], Optional[float]],
            max_extensions: int) -> Bracket:
  """Walks the bracketing rule as far as the known scores allow.

  `score(lr)` is a point's score (`point_score`): None while its runs are missing, which stops
  the walk there (the extension it would decide is not known yet).
  """
  if max_extensions < 0:
    raise ValueError(f"max_extensions must be >= 0, got {max_extensions}")
  grid = [float(lr) for lr in initial]
  if len(set(grid)) != len(grid) or len(grid) < (2 if max_extensions else 1):
    raise ValueError(f"a tuning grid needs distinct points (at least 2 to bracket), got {grid}")
  scores = {lr: score(lr) for lr in grid}
  extensions = 0
  while True:
    best = pick(scores)
    if any(v is None for v in scores.values()):
      complete = False
      break
    nxt = beyond(grid, best) if len(grid) >= 2 else None
    if nxt is None or extensions >= max_extensions:
      complete = True
      break
    grid.append(nxt)
    scores[nxt] = score(nxt)
    extensions += 1
  on_edge = len(grid) >= 2 and best in (min(grid), max(grid))
  return Bracket(tuple(grid), tuple(float(v) for v in initial), scores, best, complete,
                 extensions, max_extensions, on_edge)


def run_state(out: pathlib.Path, run: suite_lib.Run,
              explode_factor: float) -> tuple[str, Optional[float]]:
  """('ok', best val loss), ('diverged', None) or ('missing', None) for one tuning run."""
  rec = runs_lib.read_finished(out / run.relpath())
  if rec is None:  # an unfinished run's rows (maybe being written) are not read
    return "missing", None
  m = rec.metrics(None, explode_factor)
  if m["diverged"]:
    return "diverged", None
  return "ok", m["best_val_loss"]


def _walk(suite: suite_lib.Suite, out: pathlib.Path, task: str, strategy: str,
          max_extensions: int) -> tuple[Bracket, dict, dict]:
  values, states = {}, {}

  def score(lr):
    got = [run_state(out, suite.run(task, strategy, seed, lr=lr, kind="tune"),
                     suite.explode_factor) for seed in suite.tune_seeds]
    states[lr] = [s for s, _ in got]
    values[lr] = [v for _, v in got]
    return point_score(values[lr], states[lr])

  b = bracket(suite.strategy_grid(task, strategy), score, max_extensions)
  return b, values, states


def selection(suite: suite_lib.Suite, out: pathlib.Path,
              max_extensions: Optional[int] = None) -> dict:
  """Per tuned task and tuned strategy (controls are never tuned): the bracketed selection.

  Each entry: `lr` (the pick), `grid` (initial points as written, then extensions), `initial`,
  `scores` and `states` per point (per tuning seed, keyed by `f"{lr:g}"`), `score` (the mean
  per point, None while missing, null for +inf in JSON), `complete`, `extensions` (how many
  points were added), `max_extensions` and `on_edge` (the pick still on an edge of the grid).
  `max_extensions` overrides the suite's limit (0: the initial grid only, as v1 tuned).
  """
  limit = suite.max_extensions if max_extensions is None else max_extensions
  picks = {}
  for task in suite.tune_tasks:
    picks[task] = {}
    for strategy in suite.task_tuned_strategies(task):
      b, values, states = _walk(suite, out, task, strategy, limit)
      picks[task][strategy] = {
          "lr": b.pick, "grid": list(b.grid), "initial": list(b.initial),
          "scores": {f"{lr:g}": values[lr] for lr in b.grid},
          "states": {f"{lr:g}": states[lr] for lr in b.grid},
          "score": {f"{lr:g}": b.scores[lr] for lr in b.grid},
          "complete": b.complete, "extensions": b.extensions, "max_extensions": limit,
          "on_edge": b.on_edge}
  return picks


V1_KEYS = ("lr", "scores", "states", "complete")


def v1_selection(suite: suite_lib.Suite, out: pathlib.Path) -> dict:
  """The v1 report's view: the initial grid only, and only the keys v1's results.json has.

  A control (v1 suites have none) gets its adaptive strategy's entry, so that a v1 report of a
  v2 suite finds an LR for every strategy.
  """
  picks = selection(suite, out, max_extensions=0)
  return {t: {s: {k: by[(suite_lib.control_of(s) or (None, s))[1]][k] for k in V1_KEYS}
              for s in suite.task_strategies(t)}
          for t, by in picks.items()}


def needed_runs(suite: suite_lib.Suite, out: pathlib.Path) -> list[suite_lib.Run]:
  """The tuning runs the selection is waiting for, in the order to run them."""
  runs = []
  for task in suite.tune_tasks:
    for strategy in suite.task_tuned_strategies(task):
      b, _, states = _walk(suite, out, task, strategy, suite.max_extensions)
      for lr in b.missing:
        runs += [suite.run(task, strategy, seed, lr=lr, kind="tune")
                 for seed, state in zip(suite.tune_seeds, states[lr]) if state == "missing"]
  return runs


def tuned_lr(picks: dict, suite: suite_lib.Suite, task: str, strategy: str) -> Optional[float]:
  """A strategy's LR in the tuned evaluation: its pick, a control's the pick of its strategy.

  None when the selection is not complete (or the task is not tuned).
  """
  control = suite_lib.control_of(strategy)
  source = control[1] if control else strategy
  entry = picks.get(task, {}).get(source)
  if entry is None or not entry["complete"]:
    return None
  return entry["lr"]

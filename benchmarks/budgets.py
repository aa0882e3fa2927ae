"""Metrics that resolve, read at a budget: the figures of a run trained to H at a budget B <= H.

A *budget* is a number of training steps B. A run trained to its horizon H >= B is read at B from
its evaluations at steps <= B (`evaluations`: evals.jsonl's rows, every `eval_every_steps`, and
each epoch's own evaluation at its last step, from epochs.jsonl: an epoch that does not end on a
multiple of `eval_every_steps` has no evals.jsonl row, and a budget in whole epochs ends there):

- `best_val_loss_within(evals, B)`: the lowest finite validation loss over those evaluations
  (None: none of them has one).
- `steps_to_target_interp(evals, target, B)`: the step at which the validation loss first
  crosses the target, interpolated linearly between the evaluation that reaches it and the one
  before (the first evaluation's own step when it already reaches it, or when the one before has
  no finite loss); None: not reached within B. Between evaluations every k steps it resolves
  differences finer than k, which the first reaching evaluation's step (`steps_to_target`) does not.

Both are catalogue entries with `budgeted=True` (`benchmarks.catalogue`): their `compute` takes
`(run, threshold, budget_steps)`, and the report computes them, at the run's own horizon and at
each budget the suite declares for the task (`budget_key`), only for a suite that declares
budgets or names one as its `[analysis] metric`; the suites before them are read as before.
"""

from collections.abc import Sequence
import typing
from typing import Optional

from benchmarks import catalogue
from benchmarks import metrics
from benchmarks import suite_schema

if typing.TYPE_CHECKING:
  from train import records

BUDGET_STEPS = "budget_steps"  # the figure a censored run takes at a budget: the budget itself


class Evaluation(typing.NamedTuple):
  """One evaluation on the validation split: its step and its loss."""
  step: int
  val_loss: Optional[float]


def evaluations(run) -> list[Evaluation]:
  """Every validation evaluation of a run (`runs.RunRecord`), in step order: evals.jsonl's rows
  and each epoch's end-of-epoch evaluation (epochs.jsonl), once per step (an epoch that ends on a
  multiple of `eval_every_steps` wrote the same evaluation to both)."""
  by_step = {int(r.step): Evaluation(int(r.step), r.val_loss) for r in run.evals or []}
  for e in run.epochs or []:
    by_step.setdefault(int(e.step), Evaluation(int(e.step), e.val_loss))
  return [by_step[s] for s in sorted(by_step)]


def _within(evals: Sequence["records.EvalRow"], budget: Optional[int]):
  if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                             or budget < 0):
    raise ValueError(f"budget: must be a number of steps >= 0 or None, got {budget!r}")
  return [r for r in evals if budget is None or r.step <= budget]


def best_val_loss_within(evals: Sequence["records.EvalRow"],
                         budget: Optional[int] = None) -> Optional[float]:
  """The lowest finite validation loss of the evaluations at steps <= `budget` (None: all)."""
  losses = [r.val_loss for r in _within(evals, budget) if metrics.finite(r.val_loss)]
  return min(losses) if losses else None


def steps_to_target_interp(evals: Sequence["records.EvalRow"], target: Optional[float],
                           budget: Optional[int] = None) -> Optional[float]:
  """The step where the validation loss first reaches `target`, interpolated linearly between
  evaluations (see the module's docstring); None: no target, or not reached within `budget`."""
  if target is None:
    return None
  rows = _within(evals, budget)
  i = metrics.reach_index([r.val_loss for r in rows], target)
  if i is None:
    return None
  step = float(rows[i].step)
  if i == 0 or not metrics.finite(rows[i - 1].val_loss):
    return step
  before, after = rows[i - 1], rows[i]
  fraction = (before.val_loss - target) / (before.val_loss - after.val_loss)
  return float(before.step) + fraction * (step - float(before.step))


def run_horizon(run) -> Optional[int]:
  """The run's total steps (its last epoch's, else its last evaluation's)."""
  return metrics.horizon_steps(run.epochs, run.evals or [])


def budget_key(name: str, epochs: int) -> str:
  """The per-seed key of a budgeted figure read at a budget of `epochs` epochs."""
  return f"{name}@{epochs}ep"


def add_budgeted(run, threshold: Optional[float], figures: dict, budget_epochs=(),
                 run_epochs: Optional[int] = None) -> dict:
  """`figures` with every budgeted metric at the run's horizon (under its name) and at each
  budget of `budget_epochs` that the run reaches (under `budget_key`), converted to steps by the
  run's steps per epoch (its horizon / `run_epochs`)."""
  horizon = run_horizon(run)
  figures[BUDGET_STEPS] = horizon
  for m in catalogue.budgeted():
    figures[m.name] = m.compute(run, threshold, horizon)
  if not budget_epochs or horizon is None or not run_epochs:
    return figures
  per_epoch = horizon // run_epochs
  for b in budget_epochs:
    if b > run_epochs:
      continue
    figures[budget_key(BUDGET_STEPS, b)] = b * per_epoch
    for m in catalogue.budgeted():
      figures[budget_key(m.name, b)] = m.compute(run, threshold, b * per_epoch)
  return figures


def at_budget(metric: catalogue.Metric, epochs: Optional[int]) -> catalogue.Metric:
  """The entry that reads `metric` at a budget of `epochs` (None: at the run's horizon)."""
  if epochs is None or not metric.budgeted:
    return metric
  return catalogue.Metric(**{**{f: getattr(metric, f) for f in metric.__dataclass_fields__},
                             "name": budget_key(metric.name, epochs),
                             "horizon": budget_key(BUDGET_STEPS, epochs) if metric.horizon
                             else None})


def knows_horizon(strategy: str, settings: dict) -> bool:
  """Whether an arm's trajectory depends on its run's length under a task's `settings` (config
  keys): the registry's `needs_horizon`, for a strategy that is not a control, unless it takes a
  fixed warmup (`fixed_warmup`) and the settings give one (`warmup_steps`)."""
  from train import strategies as strategies_lib
  spec = strategies_lib.spec(strategy)
  if spec.fixed_warmup and settings.get("warmup_steps") is not None:
    return False
  return suite_schema.control_of(strategy) is None and spec.needs_horizon


def parse(fail, top, tasks, strategies) -> tuple[dict, dict]:
  """`[tasks.T] budgets`: whole epochs, ascending, the last the task's `epochs` (its horizon H).

  Returns task -> budgets, and the budget arms: each horizon-knowing strategy of the task
  (`knows_horizon`) at each budget below H, `budget_arm(strategy, epochs)` -> (strategy,
  epochs, the tasks it runs on). The horizon-free strategies run once to H and are read at each
  budget.
  """
  budgets, budget_arms = {}, {}
  defaults = top.get("defaults", {})
  for t, table in tasks.items():
    if "budgets" not in table:
      continue
    raw, where = table["budgets"], f"tasks.{t}.budgets"
    horizon = {**defaults, **table}.get("epochs", top["epochs"])
    if (not isinstance(raw, list) or not raw
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in raw)):
      fail(where, f"must be a non-empty list of whole epochs >= 1, got {raw!r}")
    if list(raw) != sorted(set(raw)):
      fail(where, f"must be ascending without repeats, got {raw!r}")
    if raw[-1] != horizon:
      fail(where, f"must end at the task's epochs ({horizon}), its horizon; got {raw!r}")
    budgets[t] = tuple(raw)
    chosen = table.get("arms")
    settings = suite_schema._flatten({**defaults, **table})
    for s in strategies:
      if (chosen is not None and s not in chosen) or not knows_horizon(s, settings):
        continue
      for b in raw[:-1]:
        name = suite_schema.budget_arm(s, b)
        if name in strategies:
          fail(where, f"the budget arm {name!r} is also a strategy of the suite")
        budget_arms.setdefault(name, (s, b, ()))
        budget_arms[name] = (s, b, budget_arms[name][2] + (t,))
  return budgets, budget_arms


def with_budget_arms(strategies, budget_arms) -> tuple[str, ...]:
  """The suite's strategies, each followed by its budget arms."""
  out = []
  for s in strategies:
    out.append(s)
    out += [name for name, (base, _, _) in budget_arms.items() if base == s]
  return tuple(out)


catalogue.register(catalogue.Metric(
    "best_val_loss_within", "best val loss within the budget (evaluations)", "{:.4f}",
    budgeted=True, paired=True,
    compute=lambda run, threshold, budget: best_val_loss_within(evaluations(run), budget),
    primary_text="Metric: **the best validation loss within the budget**, the lowest over the "
                 "evaluations at steps <= the budget (evals.jsonl's, every eval_every_steps, and "
                 "each epoch's at its end). Difference A − B per seed, "
                 "paired by seed (negative: A reaches a lower loss). "))
catalogue.register(catalogue.Metric(
    "steps_to_target_interp", "steps to target (interpolated)", "{:.1f}", kind="reach",
    budgeted=True, horizon=BUDGET_STEPS, unit="steps", in_steps=True,
    compute=lambda run, threshold, budget: steps_to_target_interp(evaluations(run), threshold,
                                                                  budget),
    primary_text="Metric: **steps to the target validation loss**, interpolated linearly "
                 "between the evaluations (evals.jsonl's and each epoch's at its end). A run "
                 "that does not reach the target within the budget takes the budget. "
                 "Difference A − B per seed, paired by seed (negative: A needs fewer steps). "))

"""A suite's schema: its tables as frozen dataclasses, the fields checked by their metadata.

`benchmarks.suite` reads a suite file into these: each table's keys are the dataclass's fields
(`train.fields.check`, the checker of `train.config.Config` too: the `check` rule or the type of
each field, unknown and missing keys), and only the checks across fields are written by hand
there. A field with `key=False` is not a key of the file (the parser fills it). The `Suite`'s
methods resolve the grid of runs.
"""

import copy
import dataclasses
import pathlib
import re
from typing import Any, Optional

from benchmarks import catalogue
from train import config as config_lib
from train import fields

RULE = "median over the reference seeds of the best validation loss, x {factor:g}"
DEFAULT_FACTOR = 1.05
DEFAULT_REFERENCE_SEEDS = (100, 101, 102)
DEFAULT_TUNE_SEEDS = (1000,)
# A run diverged when its loss is non-finite, or when an epoch's training loss exceeds this
# multiple of the first epoch's (the first epoch's mean already includes the initial loss).
DEFAULT_EXPLODE_FACTOR = 2.0
# Bracketing is opt-in: the limit is stated in the suite (the v1 suites add no points).
DEFAULT_MAX_EXTENSIONS = 0
DEFAULT_ALPHA = 0.05
DEFAULT_PERMUTATIONS = 10000
DEFAULT_BOOTSTRAP = 10000
# Keys of a [tasks.T] table that are the suite's, not config fields.
TASK_KEYS = frozenset({"arms", "lr_grid", "grids", "lrs", "budgets"})
PRIMARY = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*:\s*(\S+)\s+vs\s+(\S+)\s*$")


def control_of(strategy: str) -> Optional[tuple[str, str]]:
  """(kind, X) for a control strategy's name, else None: the strategy registry's declaration
  (`train.strategies.control_of`; the kinds are `train.control_kinds`'). Controls are never
  tuned: each runs at the LR its adaptive strategy was tuned to."""
  from train import strategies
  return strategies.control_of(strategy)


@dataclasses.dataclass(frozen=True)
class Primary:
  """One declared primary comparison: `a` against `b` on `task`."""
  task: str
  a: str
  b: str

  def __str__(self) -> str:
    return f"{self.task}: {self.a} vs {self.b}"


@dataclasses.dataclass(frozen=True)
class Analysis:
  """The pre-registered analysis of a suite's `[analysis]` table."""
  metric: str = fields.field(catalogue.DEFAULT, check="text")  # an entry of benchmarks.catalogue
  primaries: tuple[Primary, ...] = fields.field(
      (), check="str_list", must='must be a list of "TASK: A vs B" strings')
  alpha: float = fields.field(DEFAULT_ALPHA, check="fraction")
  permutations: int = fields.field(DEFAULT_PERMUTATIONS, check="positive_int")
  bootstrap: int = fields.field(DEFAULT_BOOTSTRAP, check="positive_int")


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Validation-loss thresholds per task, fixed from reference runs before the comparison.

  `python -m benchmarks calibrate` writes the table; `raw` is it as written (results.json's
  `calibration`), the other keys are kept there only.
  """
  factor: float = fields.field(DEFAULT_FACTOR, check="at_least_one")
  reference_seeds: tuple[int, ...] = fields.field(DEFAULT_REFERENCE_SEEDS, check="ints")
  thresholds: dict = fields.field(default_factory=dict, check="table",
                                  must="must be a table of task = value")
  raw: dict = fields.field(default_factory=dict, key=False)
  rule: Any = fields.field(None)
  strategy: Any = fields.field(None)  # of the reference runs (default: the baseline)
  lr: Any = fields.field(None)
  reference_best_val_loss: Any = fields.field(None)
  date: Any = fields.field(None)
  commit: Any = fields.field(None)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the grid; `kind` is its folder under the output: runs, tune, reference."""
  task: str
  strategy: str
  lr: float
  seed: int
  epochs: int
  settings: tuple[tuple[str, Any], ...]  # (config key, value), model.X / data.X flattened
  kind: str = "runs"
  # Config fields the runner sets for this run alone (a replay's `replay_from`).
  options: tuple[tuple[str, Any], ...] = ()
  # What the runner writes to the run folder's control.json (matched and replay controls).
  control: tuple[tuple[str, Any], ...] = ()
  # The registered strategy a budget arm (`cosine-e2`) trains; None: `strategy` itself.
  train_strategy: Optional[str] = None

  @property
  def key(self) -> tuple:
    return (self.kind, self.task, self.strategy, self.lr, self.seed)

  def relpath(self) -> pathlib.Path:
    return pathlib.Path(self.kind, self.task, self.strategy, lr_dirname(self.lr),
                        f"seed{self.seed}")

  def config(self, workdir: str = "-") -> config_lib.Config:
    """The run's config as the suite gives it (the runner adds its own fields)."""
    fields = {k: v for k, v in self.settings if "." not in k}
    options = {"model": {}, "data": {}}
    for key, value in self.settings:
      if "." in key:
        section, _, sub = key.partition(".")
        options[section][sub] = copy.deepcopy(value)  # each run its own, as from a file
    fields = config_lib.check_values(fields)
    return config_lib.Config(task=self.task, workdir=workdir,
                             strategy=self.train_strategy or self.strategy,
                             lr=self.lr, seed=self.seed, epochs=self.epochs, **fields, **options,
                             **dict(self.options))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Suite:
  """A suite file, checked (see `benchmarks.suite` for the keys)."""
  name: str = fields.field(check="name")
  description: str = fields.field("", check="text")
  seeds: tuple[int, ...] = fields.field(check="ints")  # evaluation seeds, the same for every arm
  strategies: tuple[str, ...] = fields.field(check="strs")
  # The arm paired differences are taken against; by default the registry's `baseline` strategy.
  baseline: str = fields.field("", check="text")
  epochs: int = fields.field(check="positive_int")
  lr: float = fields.field(1e-3, check="positive")
  lr_grid: tuple[float, ...] = fields.field(())
  tune_seeds: tuple[int, ...] = fields.field(DEFAULT_TUNE_SEEDS, check="ints")
  tune_tasks: tuple[str, ...] = fields.field((), check="strs")  # the parser's default: all
  explode_factor: float = fields.field(DEFAULT_EXPLODE_FACTOR, check="positive")
  defaults: dict = fields.field(default_factory=dict, check="table")
  tasks: dict = fields.field(check="table")  # task -> its table (insertion order: the report's)
  calibration: Calibration = fields.field(default_factory=Calibration, check="table")
  grids: dict = fields.field(default_factory=dict, check="table",  # strategy -> initial grid
                             must="must be a table of strategy = [lr, ...]")
  grid_points: dict = fields.field(default_factory=dict, check="table",  # task -> middle N
                                   must="must be a table of task = number of points")
  max_extensions: int = fields.field(DEFAULT_MAX_EXTENSIONS, check="count")
  untuned_runs: bool = fields.field(True, check="bool")  # with --tune, also the untuned runs
  analysis: Optional[Analysis] = fields.field(None, check="table")
  path: Optional[pathlib.Path] = fields.field(None, key=False)
  text: str = fields.field("", key=False)
  all_seeds: tuple[int, ...] = fields.field((), key=False)  # `seeds`, whatever --seeds says
  # task -> {strategy: number of evaluation seeds} from `[tasks.T.arms]`; a task without it runs
  # every strategy on every seed.
  arms: dict = fields.field(default_factory=dict, key=False)
  # task -> its budgets in epochs, ascending, the last its `epochs` (`[tasks.T] budgets`).
  budgets: dict = fields.field(default_factory=dict, key=False)
  # A budget arm -> (the strategy it trains, its epochs, the tasks it runs on): a horizon-knowing
  # strategy trained to a shorter budget, an arm of its own (`budget_arm`).
  budget_arms: dict = fields.field(default_factory=dict, key=False)

  @property
  def tuned_strategies(self) -> tuple[str, ...]:
    """The strategies that are tuned: all but the controls."""
    return tuple(s for s in self.strategies if control_of(s) is None)

  @property
  def controls(self) -> tuple[str, ...]:
    return tuple(s for s in self.strategies if control_of(s) is not None)

  def task_strategies(self, task: str) -> tuple[str, ...]:
    """The strategies that run on `task` (its arms), in the suite's order."""
    arms = self.arms.get(task)
    return tuple(s for s in self.strategies if (arms is None or s in arms)
                 and (s not in self.budget_arms or task in self.budget_arms[s][2]))

  def task_budgets(self, task: str) -> tuple[int, ...]:
    """The task's budgets in epochs (none: the task is read at its horizon only)."""
    return self.budgets.get(task, ())

  def arm_epochs(self, task: str, strategy: str) -> int:
    """The epochs an arm trains for: a budget arm's budget, else the task's horizon."""
    if strategy in self.budget_arms:
      return self.budget_arms[strategy][1]
    return int(self.task_settings(task).get("epochs", self.epochs))

  def task_tuned_strategies(self, task: str) -> tuple[str, ...]:
    return tuple(s for s in self.task_strategies(task) if control_of(s) is None)

  def task_controls(self, task: str) -> tuple[str, ...]:
    return tuple(s for s in self.task_strategies(task) if control_of(s) is not None)

  def all_seeds_of(self, task: str, strategy: str) -> tuple[int, ...]:
    """The file's evaluation seeds of one arm: the first N of `seeds`, whatever --seeds says."""
    arms = self.arms.get(task)
    return self.all_seeds if arms is None else self.all_seeds[:arms.get(strategy, 0)]

  def seeds_of(self, task: str, strategy: str) -> tuple[int, ...]:
    """The evaluation seeds that one arm runs now (`--seeds N` keeps the first N)."""
    return tuple(seed for seed in self.all_seeds_of(task, strategy) if seed in self.seeds)

  def strategy_grid(self, task: str, strategy: str) -> tuple[float, ...]:
    """The initial tuning grid of one strategy on one task, as written in the suite.

    The most specific grid wins: the task's `[tasks.T.grids]` entry of the strategy, the task's
    `lr_grid`, the strategy's `[grids]` entry, the suite's `lr_grid`. A task's `[grid_points]` N
    then keeps the middle N points (the lower middle when the difference is odd).
    """
    grid = self.grid_source(task, strategy)[1]
    n = self.grid_points.get(task)
    if n is not None and n < len(grid):
      start = (len(grid) - n) // 2
      grid = grid[start:start + n]
    return grid

  def grid_source(self, task: str, strategy: str) -> tuple[str, tuple[float, ...]]:
    """The suite field that gives one arm's grid (`strategy_grid`'s precedence), and its points."""
    table = self.tasks.get(task, {})
    base = self.budget_arms[strategy][0] if strategy in self.budget_arms else strategy
    # A budget arm's own grid, else its strategy's.
    for field, grid in ((f"tasks.{task}.grids.{strategy}", table.get("grids", {}).get(strategy)),
                        (f"tasks.{task}.grids.{base}", table.get("grids", {}).get(base)),
                        (f"tasks.{task}.lr_grid", table.get("lr_grid")),
                        (f"grids.{strategy}", self.grids.get(strategy)),
                        (f"grids.{base}", self.grids.get(base))):
      if grid:
        return field, tuple(float(lr) for lr in grid)
    return "lr_grid", tuple(self.lr_grid)

  def task_settings(self, task: str) -> dict:
    table = {k: v for k, v in self.tasks[task].items() if k not in TASK_KEYS}
    return {**_flatten(self.defaults), **_flatten(table)}

  def run(self, task: str, strategy: str, seed: int, lr: Optional[float] = None,
          kind: str = "runs") -> Run:
    settings = self.task_settings(task)
    epochs = settings.pop("epochs", self.epochs)
    settings.pop("lr", None)
    lr = self.strategy_lr(task, strategy) if lr is None else lr
    if strategy in self.budget_arms:
      base, epochs, _ = self.budget_arms[strategy]
      return Run(task, strategy, float(lr), int(seed), int(epochs),
                 tuple(sorted(settings.items())), kind, train_strategy=base)
    return Run(task, strategy, float(lr), int(seed), int(epochs),
               tuple(sorted(settings.items())), kind)

  def task_lr(self, task: str) -> float:
    return float(self.task_settings(task).get("lr", self.lr))

  def strategy_lr(self, task: str, strategy: str) -> float:
    """The LR of a strategy's untuned runs: the task's `[tasks.T.lrs]` entry, else its `lr`."""
    return float(self.tasks[task].get("lrs", {}).get(strategy, self.task_lr(task)))

  def grid(self) -> list[Run]:
    """The untuned evaluation runs, seed-major: after each seed the comparison is complete.

    Controls are not here: their runs follow from their adaptive strategy's (`compare`).
    """
    return [self.run(t, s, seed) for seed in self.seeds for t in self.tasks
            for s in self.task_tuned_strategies(t) if seed in self.seeds_of(t, s)]

  def tune_grid(self) -> list[Run]:
    """The tuning runs of the initial grids (the extensions follow from their results)."""
    return [self.run(t, s, seed, lr=lr, kind="tune") for t in self.tune_tasks
            for seed in self.tune_seeds for s in self.task_tuned_strategies(t)
            for lr in self.strategy_grid(t, s)]

  @property
  def calibration_strategy(self) -> str:
    """The strategy of the reference runs: `calibration.strategy`, else the baseline."""
    return self.calibration.raw.get("strategy", self.baseline)

  def reference_grid(self, tasks=None, lrs: Optional[dict] = None) -> list[Run]:
    """The calibration runs; `lrs` (task -> LR) gives the tuned LR where tuning is done."""
    lrs = lrs or {}
    return [self.run(t, self.calibration_strategy, seed, lr=lrs.get(t), kind="reference")
            for t in (tasks or self.tasks) for seed in self.calibration.reference_seeds]

  def narrow(self, tasks=None, strategies=None, seeds: Optional[int] = None,
             only_seeds=None) -> "Suite":
    """The suite restricted to some tasks and strategies, and to its first `seeds` seeds or to the
    seeds listed in `only_seeds` (which splits one arm's seeds over lanes that run side by side)."""
    if seeds is not None and only_seeds:
      raise ValueError("--seeds and --only-seeds: give one or the other")
    changes = {}
    if tasks:
      _check_subset("--tasks", tasks, self.tasks)
      changes["tasks"] = {t: self.tasks[t] for t in tasks}
      changes["tune_tasks"] = tuple(t for t in self.tune_tasks if t in tasks)
    if strategies:
      _check_subset("--strategies", strategies, self.strategies)
      changes["strategies"] = tuple(strategies)
    if seeds is not None:
      if not 1 <= seeds <= len(self.seeds):
        raise ValueError(f"--seeds: must be between 1 and {len(self.seeds)} (the suite's "
                         f"seeds are {list(self.seeds)}), got {seeds}")
      changes["seeds"] = self.seeds[:seeds]
    if only_seeds:
      _check_subset("--only-seeds", only_seeds, self.seeds)
      changes["seeds"] = tuple(s for s in self.seeds if s in only_seeds)
    return dataclasses.replace(self, **changes)


def budget_arm(strategy: str, epochs: int) -> str:
  """The name of `strategy` trained to a budget of `epochs` epochs, an arm of its own."""
  return f"{strategy}-e{epochs}"


def _check_subset(flag, chosen, known):
  unknown = [c for c in chosen if c not in known]
  if unknown:
    raise ValueError(f"{flag}: {', '.join(map(str, unknown))} not in the suite "
                     f"({', '.join(map(str, known))})")


def lr_dirname(lr: float) -> str:
  return f"lr{lr:g}"


def _flatten(table: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in table.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out

"""Suite files: a small declarative TOML that names a comparison's whole grid.

A suite says which tasks, strategies and seeds to run, for how many epochs, at which base LR and
model size, plus the LR grid for `--tune` and the thresholds that `calibrate` fixes before the
comparison. `benchmarks/suites/tiny.toml` is a complete example:

    name = "tiny"
    description = "..."
    seeds = [0, 1, 2]                 # evaluation seeds: the same for every strategy (paired)
    strategies = ["fixed", "gradvar"]
    baseline = "fixed"                # paired differences are taken against it
    epochs = 12
    lr = 1e-3
    lr_grid = [3e-4, 1e-3, 3e-3]      # --tune: every strategy gets this grid
    tune_seeds = [1000]               # --tune: selection runs, apart from the evaluation seeds
    tune_tasks = ["rt_sentiment"]     # --tune: only these tasks (default: all)
    max_extensions = 2                # --tune: points added beyond an edge pick (default 0)
    untuned_runs = true               # --tune: also the untuned evaluation runs (default true)
    [grids]                           # --tune: a strategy's own initial grid instead of lr_grid
    prodigy = [0.3, 1.0, 3.0]         #   (prodigy's "lr" is optax's estim_lr_coef)
    [grid_points]                     # --tune: an expensive task's grids keep their middle N
    wordnet_topics = 3
    [analysis]                        # the pre-registered analysis (benchmarks.stats)
    metric = "steps_to_target"
    primaries = ["rt_sentiment: gradvar vs gradvar-null"]   # "TASK: A vs B", Holm over these
    alpha = 0.05
    permutations = 10000              # sign-flip permutations
    bootstrap = 10000                 # bootstrap resamples of the interval
    [defaults]                        # config fields (see `python -m train --help`) for every run
    model_size = "small"
    [tasks.rt_sentiment]              # one table per task; config fields that override defaults
    train_examples = 4000
    [calibration]                     # written by `python -m benchmarks calibrate`
    ...

Control strategies (`gradvar-null`, `matched-X`, `replay-X`, with X also in the suite) are never
tuned: they run at the LR that X was tuned to, from X's runs (see `benchmarks.compare`).

Config fields are the `train.config.Config` fields; `model` and `data` sub-tables (or dotted keys
such as `model.depth = 18`) become entries of the run's `model` / `data` options. The fields that
the runner owns (`workdir`, `cache_dir`, `data_dir`, `quiet`) or that the suite's own keys name
(`task`, `strategy`, `seed`) cannot be settings: their `owner` role in `train.config` says which.
Every error names the file and the field.
"""

import copy
import dataclasses
import pathlib
import re
from typing import Any, Optional

import tomli_w
import tomllib

from train import config as config_lib

SUITES_DIR = pathlib.Path(__file__).resolve().parent / "suites"
RULE = "median over the reference seeds of the best validation loss, x {factor:g}"
DEFAULT_FACTOR = 1.05
DEFAULT_REFERENCE_SEEDS = (100, 101, 102)
DEFAULT_TUNE_SEEDS = (1000,)
# A run diverged when its loss is non-finite, or when an epoch's training loss exceeds this
# multiple of the first epoch's (the first epoch's mean already includes the initial loss).
DEFAULT_EXPLODE_FACTOR = 2.0

_RESERVED = config_lib.field_names(owners=("runner", "suite"))
_TOP_KEYS = frozenset({"name", "description", "seeds", "strategies", "baseline", "epochs", "lr",
                       "lr_grid", "tune_seeds", "tune_tasks", "explode_factor", "defaults",
                       "tasks", "calibration", "grids", "grid_points", "max_extensions",
                       "untuned_runs", "analysis"})
_CALIBRATION_KEYS = frozenset({"rule", "factor", "strategy", "lr", "reference_seeds",
                               "thresholds", "reference_best_val_loss", "date", "commit"})
# Keys of a [tasks.T] table that are the suite's, not config fields.
_TASK_KEYS = frozenset({"arms", "lr_grid", "grids", "lrs"})
_ANALYSIS_KEYS = frozenset({"metric", "primaries", "alpha", "permutations", "bootstrap"})
# Bracketing is opt-in: the limit is stated in the suite (the v1 suites add no points).
DEFAULT_MAX_EXTENSIONS = 0
METRICS = ("steps_to_target",)
DEFAULT_ALPHA = 0.05
DEFAULT_PERMUTATIONS = 10000
DEFAULT_BOOTSTRAP = 10000
_PRIMARY = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*:\s*(\S+)\s+vs\s+(\S+)\s*$")


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
  metric: str = METRICS[0]
  primaries: tuple[Primary, ...] = ()
  alpha: float = DEFAULT_ALPHA
  permutations: int = DEFAULT_PERMUTATIONS
  bootstrap: int = DEFAULT_BOOTSTRAP


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Validation-loss thresholds per task, fixed from reference runs before the comparison."""
  factor: float = DEFAULT_FACTOR
  reference_seeds: tuple[int, ...] = DEFAULT_REFERENCE_SEEDS
  thresholds: dict = dataclasses.field(default_factory=dict)
  raw: dict = dataclasses.field(default_factory=dict)


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
    return config_lib.Config(task=self.task, workdir=workdir, strategy=self.strategy,
                             lr=self.lr, seed=self.seed, epochs=self.epochs, **fields, **options,
                             **dict(self.options))


@dataclasses.dataclass(frozen=True)
class Suite:
  name: str
  description: str
  path: Optional[pathlib.Path]
  text: str
  seeds: tuple[int, ...]
  strategies: tuple[str, ...]
  baseline: str
  epochs: int
  lr: float
  lr_grid: tuple[float, ...]
  tune_seeds: tuple[int, ...]
  tune_tasks: tuple[str, ...]
  explode_factor: float
  defaults: dict
  tasks: dict  # task -> its override table (insertion order is the report's order)
  calibration: Calibration
  grids: dict = dataclasses.field(default_factory=dict)  # strategy -> its own initial grid
  grid_points: dict = dataclasses.field(default_factory=dict)  # task -> middle N grid points
  max_extensions: int = DEFAULT_MAX_EXTENSIONS
  untuned_runs: bool = True  # with --tune, also the untuned evaluation runs of tuned tasks
  analysis: Optional[Analysis] = None
  all_seeds: tuple[int, ...] = ()  # the file's evaluation seeds, whatever --seeds narrows to
  # task -> {strategy: number of evaluation seeds} from `[tasks.T.arms]`; a task without it runs
  # every strategy on every seed.
  arms: dict = dataclasses.field(default_factory=dict)

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
    return tuple(s for s in self.strategies if arms is None or s in arms)

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
    for field, grid in ((f"tasks.{task}.grids.{strategy}", table.get("grids", {}).get(strategy)),
                        (f"tasks.{task}.lr_grid", table.get("lr_grid")),
                        (f"grids.{strategy}", self.grids.get(strategy))):
      if grid:
        return field, tuple(float(lr) for lr in grid)
    return "lr_grid", tuple(self.lr_grid)

  def task_settings(self, task: str) -> dict:
    table = {k: v for k, v in self.tasks[task].items() if k not in _TASK_KEYS}
    return {**_flatten(self.defaults), **_flatten(table)}

  def run(self, task: str, strategy: str, seed: int, lr: Optional[float] = None,
          kind: str = "runs") -> Run:
    settings = self.task_settings(task)
    epochs = settings.pop("epochs", self.epochs)
    settings.pop("lr", None)
    lr = self.strategy_lr(task, strategy) if lr is None else lr
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


def resolve_path(name_or_path: str) -> pathlib.Path:
  """`cpu` means benchmarks/suites/cpu.toml; anything ending in .toml is a path."""
  if name_or_path.endswith(".toml"):
    path = pathlib.Path(name_or_path)
  else:
    path = SUITES_DIR / f"{name_or_path}.toml"
  if not path.is_file():
    known = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.toml")))
    raise ValueError(f"--suite: no suite file {path} (suites here: {known})")
  return path


def load(name_or_path: str) -> Suite:
  path = resolve_path(name_or_path)
  return parse(path.read_text(), path)


def parse(text: str, path: Optional[pathlib.Path] = None) -> Suite:
  """Reads and checks a suite; every error names the file and the field."""
  where = str(path) if path else "<suite>"
  try:
    raw = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"{where}: not valid TOML: {e}") from None

  def fail(field, message):
    raise ValueError(f"{where}: {field}: {message}")

  unknown = sorted(set(raw) - _TOP_KEYS)
  if unknown:
    fail(unknown[0], f"unknown key; known keys: {', '.join(sorted(_TOP_KEYS))}")
  for field in ("name", "seeds", "strategies", "epochs", "tasks"):
    if field not in raw:
      fail(field, "is required")

  def str_list(field, default=None):
    value = raw.get(field, default)
    if (not isinstance(value, list) or not value
        or not all(isinstance(v, str) for v in value)):
      fail(field, f"must be a non-empty list of strings, got {value!r}")
    if len(set(value)) != len(value):
      fail(field, f"has duplicates: {value!r}")
    return tuple(value)

  def int_list(field, value):
    if (not isinstance(value, (list, tuple)) or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
      fail(field, f"must be a non-empty list of ints, got {value!r}")
    if len(set(value)) != len(value):
      fail(field, f"has duplicates: {list(value)!r}")
    return tuple(value)

  def positive(field, value, kinds=(int, float)):
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
      fail(field, f"must be a positive number, got {value!r}")
    return value

  name = raw["name"]
  if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
    fail("name", f"must be a plain name (letters, digits, _ . -), got {name!r}")
  description = raw.get("description", "")
  if not isinstance(description, str):
    fail("description", "must be a string")
  seeds = int_list("seeds", raw["seeds"])
  strategy_names = str_list("strategies")
  from train import strategies as strategies_lib
  from train import tasks as tasks_lib
  for s in strategy_names:
    if s not in strategies_lib.names():
      fail("strategies", f"unknown strategy {s!r}; known: {', '.join(strategies_lib.names())}")
    control = control_of(s)
    if control and control[1] not in strategy_names:
      fail("strategies", f"{s!r} is a control of {control[1]!r}, which must also be one of the "
                         f"suite's strategies (it runs at {control[1]}'s tuned LR, from its runs)")
  baseline = raw.get("baseline", "fixed")
  if baseline not in strategy_names:
    fail("baseline", f"{baseline!r} must be one of the suite's strategies {list(strategy_names)}")
  epochs = positive("epochs", raw["epochs"], (int,))
  lr = float(positive("lr", raw.get("lr", 1e-3)))
  lr_grid = tuple(float(positive(f"lr_grid[{i}]", v)) for i, v in enumerate(raw.get("lr_grid", [])))
  if len(set(lr_grid)) != len(lr_grid):
    fail("lr_grid", f"has duplicates: {list(lr_grid)!r}")
  tune_seeds = int_list("tune_seeds", raw.get("tune_seeds", list(DEFAULT_TUNE_SEEDS)))
  explode = float(positive("explode_factor", raw.get("explode_factor", DEFAULT_EXPLODE_FACTOR)))

  tasks = raw["tasks"]
  if not isinstance(tasks, dict) or not tasks:
    fail("tasks", "must hold at least one [tasks.NAME] table")
  for t, table in tasks.items():
    if t not in tasks_lib.names():
      fail(f"tasks.{t}", f"unknown task; known tasks: {', '.join(tasks_lib.names())}")
    if not isinstance(table, dict):
      fail(f"tasks.{t}", "must be a table")
    _check_settings(fail, f"tasks.{t}",
                    {k: v for k, v in table.items() if k not in _TASK_KEYS})
  arms = {t: _parse_arms(fail, t, table["arms"], strategy_names, seeds)
          for t, table in tasks.items() if "arms" in table}
  defaults = raw.get("defaults", {})
  if not isinstance(defaults, dict):
    fail("defaults", "must be a table")
  _check_settings(fail, "defaults", defaults)
  tune_tasks = str_list("tune_tasks", list(tasks)) if "tune_tasks" in raw else tuple(tasks)
  for t in tune_tasks:
    if t not in tasks:
      fail("tune_tasks", f"{t!r} is not one of the suite's tasks {list(tasks)}")

  def strategy_grids(where, table) -> dict:
    """A `[grids]`-style table, strategy = [lr, ...], checked; strategy -> float tuple."""
    if not isinstance(table, dict):
      fail(where, "must be a table of strategy = [lr, ...]")
    out = {}
    for strategy, grid in table.items():
      field = f"{where}.{strategy}"
      if strategy not in strategy_names:
        fail(field, f"is not one of the suite's strategies {list(strategy_names)}")
      if control_of(strategy):
        fail(field, "is a control: controls are never tuned (they run at their adaptive "
                    "strategy's tuned LR)")
      out[strategy] = lr_list(field, grid)
    return out

  def lr_list(field, grid) -> tuple[float, ...]:
    if not isinstance(grid, list) or not grid:
      fail(field, f"must be a non-empty list of numbers, got {grid!r}")
    values = tuple(float(positive(f"{field}[{i}]", v)) for i, v in enumerate(grid))
    if len(set(values)) != len(values):
      fail(field, f"has duplicates: {grid!r}")
    return values

  grids_out = strategy_grids("grids", raw.get("grids", {}))
  for t, table in tasks.items():
    lrs = table.get("lrs", {})
    if not isinstance(lrs, dict):
      fail(f"tasks.{t}.lrs", "must be a table of strategy = lr")
    for strategy, value in lrs.items():
      if strategy not in strategy_names:
        fail(f"tasks.{t}.lrs.{strategy}",
             f"is not one of the suite's strategies {list(strategy_names)}")
      positive(f"tasks.{t}.lrs.{strategy}", value)
    if "lr_grid" in table:
      lr_list(f"tasks.{t}.lr_grid", table["lr_grid"])
    strategy_grids(f"tasks.{t}.grids", table.get("grids", {}))
  max_extensions = raw.get("max_extensions", DEFAULT_MAX_EXTENSIONS)
  if isinstance(max_extensions, bool) or not isinstance(max_extensions, int) or max_extensions < 0:
    fail("max_extensions", f"must be an int >= 0, got {max_extensions!r}")
  grid_points = raw.get("grid_points", {})
  if not isinstance(grid_points, dict):
    fail("grid_points", "must be a table of task = number of points")
  for t, n in grid_points.items():
    if t not in tasks:
      fail(f"grid_points.{t}", f"is not one of the suite's tasks {list(tasks)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < (2 if max_extensions else 1):
      fail(f"grid_points.{t}", f"must be an int >= {2 if max_extensions else 1} (bracketing "
                               f"needs 2 points), got {n!r}")
  untuned_runs = raw.get("untuned_runs", True)
  if not isinstance(untuned_runs, bool):
    fail("untuned_runs", f"must be true or false, got {untuned_runs!r}")
  analysis = _parse_analysis(fail, raw["analysis"], tasks, strategy_names, arms) \
      if "analysis" in raw else None

  overlap = set(seeds) & set(tune_seeds)
  if overlap:
    fail("tune_seeds", f"{sorted(overlap)} are also evaluation seeds; tuning on them would leak "
                       "the selection into the comparison")
  calibration = _parse_calibration(fail, raw.get("calibration", {}), tasks, seeds, tune_seeds)
  if calibration.raw.get("strategy", baseline) not in strategy_names:
    fail("calibration.strategy", f"{calibration.raw['strategy']!r} must be one of the suite's "
                                 f"strategies {list(strategy_names)}")
  if control_of(calibration.raw.get("strategy", baseline)):
    fail("calibration.strategy" if "strategy" in calibration.raw else "baseline",
         "the reference runs' strategy cannot be a control (controls are never tuned)")
  for t, by in arms.items():
    for field, strategy in (("baseline", baseline),
                            ("calibration.strategy", calibration.raw.get("strategy", baseline))):
      if strategy not in by:
        fail(f"tasks.{t}.arms", f"has no {strategy!r}, the suite's {field}")
  suite = Suite(name, description, path, text, seeds, strategy_names, baseline, epochs, lr,
                lr_grid, tune_seeds, tune_tasks, explode, defaults, tasks, calibration,
                grids_out, dict(grid_points), max_extensions, untuned_runs, analysis, seeds, arms)
  if max_extensions:  # every arm's grid, as it resolves (a task's own, the strategy's, the suite's)
    for t in tasks:
      for strategy in suite.task_strategies(t):
        field, grid = suite.grid_source(t, strategy)
        if control_of(strategy) is None and len(grid) == 1:
          fail(field, f"has a single point; bracketing (max_extensions = {max_extensions}) "
                      "needs 2")
  # Every run's config is checked now, so a typo fails before hours of training, not during.
  for t in tasks:
    try:
      config = suite.run(t, baseline, seeds[0]).config()
      config_lib.validate(config)
    except ValueError as e:
      fail(f"tasks.{t}", f"resolves to a bad run config: {e}")
  return suite


def _check_settings(fail, where, table):
  fields = {f.name for f in dataclasses.fields(config_lib.Config)}
  for key, value in table.items():
    if key in _RESERVED:
      fail(f"{where}.{key}", "is set by the runner, not by the suite")
    if key in ("model", "data"):
      if not isinstance(value, dict):
        fail(f"{where}.{key}", "must be a table of options")
    elif key not in fields:
      known = ", ".join(sorted(fields - _RESERVED))
      fail(f"{where}.{key}", f"unknown config field; known: {known}")


def _parse_arms(fail, task, raw, strategy_names, seeds) -> dict:
  """`[tasks.T.arms]`: strategy = number of evaluation seeds (the first N of `seeds`)."""
  where = f"tasks.{task}.arms"
  if not isinstance(raw, dict) or not raw:
    fail(where, "must be a non-empty table of strategy = number of seeds")
  for strategy, n in raw.items():
    if strategy not in strategy_names:
      fail(f"{where}.{strategy}", f"is not one of the suite's strategies {list(strategy_names)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(seeds):
      fail(f"{where}.{strategy}", f"must be a number of seeds from 1 to {len(seeds)} (the "
                                  f"first N of seeds = {list(seeds)}), got {n!r}")
  for strategy, n in raw.items():
    control = control_of(strategy)
    if control is None:
      continue
    from train import control_kinds
    kind, source = control
    kind = control_kinds.get(kind)
    if source not in raw:
      fail(f"{where}.{strategy}", f"is a control of {source!r}, which must also be an arm "
                                  "of the task (the control runs from its runs)")
    if kind.follows_source_run and n > raw[source]:
      fail(f"{where}.{strategy}", f"has {n} seeds, more than its source {source!r} ({raw[source]})"
                                  f"; a {kind.name} run follows a run of its source")
    if raw[source] < kind.min_source_seeds:
      fail(f"{where}.{source}", f"needs at least {kind.min_source_seeds} seeds for {strategy!r} "
                                f"(a {kind.name} run follows another seed's run)")
  return dict(raw)


def _parse_analysis(fail, raw, tasks, strategy_names, arms=None) -> Analysis:
  if not isinstance(raw, dict):
    fail("analysis", "must be a table")
  unknown = sorted(set(raw) - _ANALYSIS_KEYS)
  if unknown:
    fail(f"analysis.{unknown[0]}", f"unknown key; known: {', '.join(sorted(_ANALYSIS_KEYS))}")
  metric = raw.get("metric", METRICS[0])
  if metric not in METRICS:
    fail("analysis.metric", f"must be one of {list(METRICS)}, got {metric!r}")
  texts = raw.get("primaries", [])
  if not isinstance(texts, list) or not all(isinstance(p, str) for p in texts):
    fail("analysis.primaries", f'must be a list of "TASK: A vs B" strings, got {texts!r}')
  primaries = []
  for i, text in enumerate(texts):
    field = f"analysis.primaries[{i}]"
    m = _PRIMARY.match(text)
    if not m:
      fail(field, f'must read "TASK: A vs B", got {text!r}')
    primary = Primary(*m.groups())
    if primary.task not in tasks:
      fail(field, f"{primary.task!r} is not one of the suite's tasks {list(tasks)}")
    for strategy in (primary.a, primary.b):
      if strategy not in strategy_names:
        fail(field, f"{strategy!r} is not one of the suite's strategies {list(strategy_names)}")
      task_arms = (arms or {}).get(primary.task)
      if task_arms is not None and strategy not in task_arms:
        fail(field, f"{strategy!r} is not an arm of {primary.task} "
                    f"(tasks.{primary.task}.arms: {list(task_arms)})")
    if primary.a == primary.b:
      fail(field, f"compares {primary.a!r} with itself")
    if any({p.a, p.b} == {primary.a, primary.b} and p.task == primary.task for p in primaries):
      fail(field, f"{text!r} repeats an earlier primary")
    primaries.append(primary)
  alpha = raw.get("alpha", DEFAULT_ALPHA)
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
    fail("analysis.alpha", f"must be a number in (0, 1), got {alpha!r}")
  counts = {}
  for key, default in (("permutations", DEFAULT_PERMUTATIONS), ("bootstrap", DEFAULT_BOOTSTRAP)):
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      fail(f"analysis.{key}", f"must be a positive int, got {value!r}")
    counts[key] = value
  return Analysis(metric, tuple(primaries), float(alpha), counts["permutations"],
                  counts["bootstrap"])


def _parse_calibration(fail, raw, tasks, seeds, tune_seeds) -> Calibration:
  if not isinstance(raw, dict):
    fail("calibration", "must be a table")
  unknown = sorted(set(raw) - _CALIBRATION_KEYS)
  if unknown:
    fail(f"calibration.{unknown[0]}", f"unknown key; known: {', '.join(sorted(_CALIBRATION_KEYS))}")
  factor = raw.get("factor", DEFAULT_FACTOR)
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
    fail("calibration.factor", f"must be a number >= 1, got {factor!r}")
  ref = raw.get("reference_seeds", list(DEFAULT_REFERENCE_SEEDS))
  if (not isinstance(ref, list) or not ref
      or not all(isinstance(v, int) and not isinstance(v, bool) for v in ref)):
    fail("calibration.reference_seeds", f"must be a non-empty list of ints, got {ref!r}")
  overlap = set(ref) & (set(seeds) | set(tune_seeds))
  if overlap:
    fail("calibration.reference_seeds",
         f"{sorted(overlap)} are also evaluation or tuning seeds; thresholds must come from "
         "separate reference runs")
  thresholds = raw.get("thresholds", {})
  if not isinstance(thresholds, dict):
    fail("calibration.thresholds", "must be a table of task = value")
  for t, v in thresholds.items():
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
      fail(f"calibration.thresholds.{t}", f"must be a positive number, got {v!r}")
  return Calibration(float(factor), tuple(ref), {t: float(v) for t, v in thresholds.items()},
                     dict(raw))


def with_calibration(text: str, calibration: dict) -> str:
  """The suite text with its [calibration] tables replaced; everything else is kept verbatim.

  The rest of the file, comments included, stays as written. The result is checked by parsing:
  if the textual edit would not give exactly the old suite plus the new calibration (e.g. an
  inline `calibration = {...}`), the whole file is rewritten by tomli-w instead.
  """
  kept, skipping = [], False
  header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
  for line in text.splitlines():
    m = header.match(line)
    if m:
      first = m.group(1).split(".")[0].strip().strip('"\'')
      skipping = first == "calibration"
    if not skipping:
      kept.append(line)
  while kept and not kept[-1].strip():
    kept.pop()
  new = "\n".join(kept) + "\n\n" + tomli_w.dumps({"calibration": calibration})
  expected = {**tomllib.loads(text), "calibration": calibration}
  try:
    ok = tomllib.loads(new) == expected
  except tomllib.TOMLDecodeError:
    ok = False
  if ok:
    return new
  return tomli_w.dumps(expected)

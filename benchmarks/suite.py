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

The tables are the frozen dataclasses of `benchmarks.suite_schema` (`Suite`, `Calibration`,
`Analysis`), whose field metadata drives the checks of each key's type and range
(`train.fields`, the checker of `train.config.Config`); this module adds only the checks across
fields: strategies and tasks that must exist, controls and their sources, grids, arms, primaries,
seeds that must not overlap, and every run's resolved config. `[analysis] metric` must name an
entry of the metric catalogue (`benchmarks.catalogue`).
"""

import dataclasses
import pathlib
import re
from typing import Optional

import tomli_w
import tomllib

from benchmarks import budgets
from benchmarks import catalogue
from benchmarks import suite_schema
from train import config as config_lib
from train import fields

SUITES_DIR = pathlib.Path(__file__).resolve().parent / "suites"
_RESERVED = config_lib.field_names(owners=("runner", "suite"))
# The schema's names, which the rest of benchmarks/ reads from here.
Analysis = suite_schema.Analysis
Calibration = suite_schema.Calibration
Primary = suite_schema.Primary
Run = suite_schema.Run
Suite = suite_schema.Suite
control_of = suite_schema.control_of
lr_dirname = suite_schema.lr_dirname
RULE = suite_schema.RULE
DEFAULT_FACTOR = suite_schema.DEFAULT_FACTOR
DEFAULT_TUNE_SEEDS = suite_schema.DEFAULT_TUNE_SEEDS
DEFAULT_REFERENCE_SEEDS = suite_schema.DEFAULT_REFERENCE_SEEDS
DEFAULT_EXPLODE_FACTOR = suite_schema.DEFAULT_EXPLODE_FACTOR


class _Fail:
  """`fail(field, message)` raises the suite's error, naming the file and the field."""

  def __init__(self, where: str):
    self.where = where
    self.prefix = f"{where}: "  # what `train.fields.check` puts before a field's name

  def __call__(self, field: str, message: str):
    raise ValueError(f"{self.where}: {field}: {message}")


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
  fail = _Fail(str(path) if path else "<suite>")
  try:
    raw = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"{fail.where}: not valid TOML: {e}") from None
  top = fields.check(Suite, raw, fail.prefix)  # every key's type and range
  strategies, seeds, tasks = top["strategies"], top["seeds"], top["tasks"]
  _check_strategies(fail, strategies)
  baseline = top.get("baseline") or _registry_baseline(fail)
  if baseline not in strategies:
    fail("baseline", f"{baseline!r} must be one of the suite's strategies {list(strategies)}")
  _check_tasks(fail, tasks)
  _check_settings(fail, "defaults", top.get("defaults", {}))
  lr_grid = _lr_list(fail, "lr_grid", top.get("lr_grid", ()), empty=True)
  grids = _strategy_grids(fail, "grids", top.get("grids", {}), strategies)
  for t, table in tasks.items():
    _check_task_grids(fail, t, table, strategies)
  budgets_, budget_arms = budgets.parse(fail, top, tasks, strategies)
  strategies = budgets.with_budget_arms(strategies, budget_arms)
  arms = {t: _parse_arms(fail, t, table["arms"], strategies, seeds)
          for t, table in tasks.items() if "arms" in table}
  for name, (base, _, on) in budget_arms.items():  # a budget arm has its strategy's seeds
    for t in on:
      if t in arms and name not in arms[t]:
        arms[t][name] = arms[t][base]
  tune_tasks = top.get("tune_tasks", tuple(tasks))
  for t in tune_tasks:
    if t not in tasks:
      fail("tune_tasks", f"{t!r} is not one of the suite's tasks {list(tasks)}")
  max_extensions = top.get("max_extensions", suite_schema.DEFAULT_MAX_EXTENSIONS)
  _check_grid_points(fail, top.get("grid_points", {}), tasks, max_extensions)
  tune_seeds = top.get("tune_seeds", suite_schema.DEFAULT_TUNE_SEEDS)
  overlap = set(seeds) & set(tune_seeds)
  if overlap:
    fail("tune_seeds", f"{sorted(overlap)} are also evaluation seeds; tuning on them would leak "
                       "the selection into the comparison")
  analysis = (_parse_analysis(fail, raw["analysis"], tasks, strategies, arms)
              if "analysis" in raw else None)
  calibration = _parse_calibration(fail, raw.get("calibration", {}), seeds, tune_seeds)
  suite = Suite(**{**top, "baseline": baseline, "strategies": strategies, "lr_grid": lr_grid,
                   "grids": grids, "tune_tasks": tune_tasks, "calibration": calibration,
                   "analysis": analysis},
                path=path, text=text, all_seeds=seeds, arms=arms, budgets=budgets_,
                budget_arms=budget_arms)
  _check_references(fail, suite)
  return suite


def _registry_baseline(fail) -> str:
  """The one strategy that the registry declares the baseline (Adam at a fixed LR)."""
  from train import strategies as strategies_lib
  found = strategies_lib.names("baseline")
  if len(found) != 1:
    fail("baseline", f"not given, and the registry declares {len(found)} baseline strategies "
                     f"({', '.join(found) or 'none'}): name one")
  return found[0]


def _check_strategies(fail, names) -> None:
  from train import strategies as strategies_lib
  for s in names:
    if s not in strategies_lib.names():
      fail("strategies", f"unknown strategy {s!r}; known: {', '.join(strategies_lib.names())}")
    control = control_of(s)
    if control and control[1] not in names:
      fail("strategies", f"{s!r} is a control of {control[1]!r}, which must also be one of the "
                         f"suite's strategies (it runs at {control[1]}'s tuned LR, from its runs)")


def _check_tasks(fail, tasks) -> None:
  from train import tasks as tasks_lib
  if not tasks:
    fail("tasks", "must hold at least one [tasks.NAME] table")
  for t, table in tasks.items():
    if t not in tasks_lib.names():
      fail(f"tasks.{t}", f"unknown task; known tasks: {', '.join(tasks_lib.names())}")
    if not isinstance(table, dict):
      fail(f"tasks.{t}", "must be a table")
    _check_settings(fail, f"tasks.{t}",
                    {k: v for k, v in table.items() if k not in suite_schema.TASK_KEYS})


def _lr_list(fail, field, grid, empty: bool = False) -> tuple[float, ...]:
  """A list of distinct positive LRs (non-empty unless `empty`), as floats."""
  if not isinstance(grid, (list, tuple)) or not (grid or empty):
    fail(field, f"must be a non-empty list of numbers, got {grid!r}")
  values = tuple(float(fields.check_rule("positive", v, f"{fail.prefix}{field}[{i}]"))
                 for i, v in enumerate(grid))
  if len(set(values)) != len(values):
    fail(field, f"has duplicates: {list(grid)!r}")
  return values


def _strategy_grids(fail, where, table, strategy_names) -> dict:
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
    out[strategy] = _lr_list(fail, field, grid)
  return out


def _check_task_grids(fail, task, table, strategy_names) -> None:
  """A task's own `lrs`, `lr_grid` and `grids`."""
  lrs = table.get("lrs", {})
  if not isinstance(lrs, dict):
    fail(f"tasks.{task}.lrs", "must be a table of strategy = lr")
  for strategy, value in lrs.items():
    if strategy not in strategy_names:
      fail(f"tasks.{task}.lrs.{strategy}",
           f"is not one of the suite's strategies {list(strategy_names)}")
    fields.check_rule("positive", value, f"{fail.prefix}tasks.{task}.lrs.{strategy}")
  if "lr_grid" in table:
    _lr_list(fail, f"tasks.{task}.lr_grid", table["lr_grid"])
  _strategy_grids(fail, f"tasks.{task}.grids", table.get("grids", {}), strategy_names)


def _check_grid_points(fail, grid_points, tasks, max_extensions) -> None:
  least = 2 if max_extensions else 1
  for t, n in grid_points.items():
    if t not in tasks:
      fail(f"grid_points.{t}", f"is not one of the suite's tasks {list(tasks)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < least:
      fail(f"grid_points.{t}", f"must be an int >= {least} (bracketing needs 2 points), "
                               f"got {n!r}")


def _check_references(fail, suite: Suite) -> None:
  """What the whole suite must agree on: the reference strategy, each task's arms, one-point
  grids under bracketing, and every run's config."""
  strategy = suite.calibration_strategy
  if strategy not in suite.strategies:
    fail("calibration.strategy", f"{strategy!r} must be one of the suite's strategies "
                                 f"{list(suite.strategies)}")
  if control_of(strategy):
    fail("calibration.strategy" if suite.calibration.strategy is not None else "baseline",
         "the reference runs' strategy cannot be a control (controls are never tuned)")
  for t, by in suite.arms.items():
    for field, name in (("baseline", suite.baseline), ("calibration.strategy", strategy)):
      if name not in by:
        fail(f"tasks.{t}.arms", f"has no {name!r}, the suite's {field}")
  if suite.max_extensions:  # every arm's grid as it resolves (the task's, the strategy's, ...)
    for t in suite.tasks:
      for name in suite.task_strategies(t):
        field, grid = suite.grid_source(t, name)
        if control_of(name) is None and len(grid) == 1:
          fail(field, f"has a single point; bracketing (max_extensions = "
                      f"{suite.max_extensions}) needs 2")
  # Every run's config is checked now, so a typo fails before hours of training, not during.
  for t in suite.tasks:
    try:
      config_lib.validate(suite.run(t, suite.baseline, suite.seeds[0]).config())
    except ValueError as e:
      fail(f"tasks.{t}", f"resolves to a bad run config: {e}")


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
  values = fields.check(Analysis, raw, fail.prefix + "analysis.")
  metric = values.get("metric", catalogue.DEFAULT)
  if metric not in catalogue.names():
    fail("analysis.metric", f"unknown metric {metric!r}; known: {', '.join(catalogue.names())} "
                            "(benchmarks.catalogue.register adds one)")
  primaries = []
  for i, text in enumerate(values.get("primaries", ())):
    field = f"analysis.primaries[{i}]"
    m = suite_schema.PRIMARY.match(text)
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
  return Analysis(**{**values, "primaries": tuple(primaries)})


def _parse_calibration(fail, raw, seeds, tune_seeds) -> Calibration:
  if not isinstance(raw, dict):
    fail("calibration", "must be a table")
  values = fields.check(Calibration, raw, fail.prefix + "calibration.")
  overlap = set(values.get("reference_seeds", ())) & (set(seeds) | set(tune_seeds))
  if overlap:
    fail("calibration.reference_seeds",
         f"{sorted(overlap)} are also evaluation or tuning seeds; thresholds must come from "
         "separate reference runs")
  thresholds = {t: float(fields.check_rule("positive", v,
                                           f"{fail.prefix}calibration.thresholds.{t}"))
                for t, v in values.get("thresholds", {}).items()}
  return Calibration(**{**values, "thresholds": thresholds}, raw=dict(raw))


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

"""The metric catalogue: every per-run figure the report shows or tests, one entry each.

An entry says how to compute the figure from a run (`compute`; the built-in figures come from
`metrics.run_metrics`), its label, its direction, its format, and how the report treats it:

- `kind="numeric"`: a mean ± 95% t interval over the seeds (`summary` in results.json);
- `kind="reach"`: a count of the seeds that reach a value (None: "not reached"), the median and
  the values per seed (`reach`); never averaged.

A suite's `[analysis] metric` names the entry its primaries are tested on (`benchmarks.stats`'
paired sign-flip test); an entry with a `horizon` gives a run that never reaches it the value of
that figure (steps to target: the run's total steps), one without drops such a seed. An unknown
name fails when the suite loads.

Adding a metric is one call, from any module (a test file included), before the suite loads:

    from benchmarks import catalogue

    catalogue.register(catalogue.Metric(
        "final_train_loss", "final train loss", "{:.4f}",
        compute=lambda run, threshold: run.epochs[-1].train_loss if run.epochs else None))

`compute(run, threshold)` gets the run's records (`benchmarks.runs.RunRecord`) and the task's
calibrated threshold (None when not calibrated) and returns a number or None. Its values then
appear per seed in results.json, in the report's tables, and, when the suite declares it, in the
primaries. `benchmarks.metrics.register` is the same function.
"""

from collections.abc import Callable
import dataclasses
from typing import Any, Optional

KINDS = ("numeric", "reach")
DEFAULT = "steps_to_target"  # the primary metric of a suite that names none (the v2 suites')


@dataclasses.dataclass(frozen=True)
class Metric:
  """One figure of a run (see the module's docstring)."""
  name: str
  label: str
  fmt: str = "{:.4g}"
  higher_is_better: bool = False
  kind: str = "numeric"
  # (run: RunRecord, threshold) -> value; None: a figure that `metrics.run_metrics` computes.
  compute: Optional[Callable[[Any, Optional[float]], Optional[float]]] = None
  # Shown for every strategy, even one without runs (the seed's figures); else only where a run
  # has a value (figures of evals.jsonl, and registered metrics).
  always: bool = False
  paired: bool = False  # in the paired table against the baseline
  # The figure a run that never reaches this one takes in the primaries' test (None: dropped).
  horizon: Optional[str] = None
  unit: str = ""  # of the differences in the primaries' tables ("steps")
  in_steps: bool = False  # a count of training steps: x a step's cost = time to target
  # REPORT.md's sentences when the suite tests its primaries on this metric; None: from `label`.
  primary_text: Optional[str] = None
  controls_text: Optional[str] = None
  # `compute(run, threshold, budget_steps)`: a figure read at a budget (`benchmarks.budgets`),
  # computed only for the suites that declare budgets or name it as their metric.
  budgeted: bool = False

  def __post_init__(self):
    if not self.name or not isinstance(self.name, str):
      raise ValueError(f"Metric.name: must be a non-empty string, got {self.name!r}")
    if self.kind not in KINDS:
      raise ValueError(f"Metric.kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
    if self.compute is not None and not callable(self.compute):
      raise ValueError(f"Metric.compute: must be callable, got {self.compute!r}")
    if self.budgeted and self.compute is None:
      raise ValueError(f"Metric.budgeted: a budgeted metric {self.name!r} needs its compute")

  @property
  def builtin(self) -> bool:
    return self.compute is None

  def primary_sentence(self) -> str:
    if self.primary_text is not None:
      return self.primary_text
    better = "higher" if self.higher_is_better else "lower"
    return (f"Metric: **{self.label}**. Difference A − B per seed, paired by seed ({better} "
            "is better). ")

  def controls_sentence(self) -> str:
    if self.controls_text is not None:
      return self.controls_text
    return f"{self.label[:1].upper()}{self.label[1:]}, X − control per seed, "


_CATALOGUE: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
  """Adds a metric to the catalogue (see the module's docstring); its name must be new."""
  if not isinstance(metric, Metric):
    raise ValueError(f"register: metric must be a catalogue.Metric, got {metric!r}")
  if metric.name in _CATALOGUE:
    raise ValueError(f"register: metric {metric.name!r} is already in the catalogue")
  _CATALOGUE[metric.name] = metric
  return metric


def unregister(name: str) -> None:
  """Removes a registered metric (for tests); the built-in ones stay."""
  if name in _CATALOGUE and not _CATALOGUE[name].builtin:
    del _CATALOGUE[name]


def names() -> tuple[str, ...]:
  return tuple(_CATALOGUE)


def get(name: str) -> Metric:
  if name not in _CATALOGUE:
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(_CATALOGUE)}")
  return _CATALOGUE[name]


def of_kind(kind: str) -> tuple[Metric, ...]:
  """The entries of one kind, in the catalogue's order (the report's order)."""
  return tuple(m for m in _CATALOGUE.values() if m.kind == kind)


def budgeted() -> tuple[Metric, ...]:
  """The entries read at a budget (`benchmarks.budgets`), in the catalogue's order."""
  return tuple(m for m in _CATALOGUE.values() if m.budgeted)


def label(name: str) -> str:
  return _CATALOGUE[name].label


def fmt(name: str) -> str:
  return _CATALOGUE[name].fmt


def add_registered(run: Any, threshold: Optional[float], figures: dict) -> dict:
  """`figures` with the value of each registered metric added."""
  for m in _CATALOGUE.values():
    if m.compute is not None and not m.budgeted:
      figures[m.name] = m.compute(run, threshold)
  return figures


# The built-in figures, in the order of the report's tables.
for _name, _label, _fmt, _higher, _paired in (
    ("final_val_loss", "final val loss", "{:.4f}", False, True),
    ("best_val_loss", "best val loss", "{:.4f}", False, True),
    ("stability", "stability (std val loss, last 5 ep.)", "{:.4f}", False, True),
    ("final_val_accuracy", "final val acc", "{:.4f}", True, True),
    ("best_val_accuracy", "best val acc", "{:.4f}", True, True),
    ("test_accuracy", "test acc", "{:.4f}", True, True),
    ("test_loss", "test loss", "{:.4f}", False, False),
    ("train_time_s", "train time (s)", "{:.1f}", False, True),
    ("train_cpu_s", "train CPU time (s)", "{:.1f}", False, False),
    ("process_cpu_s", "process CPU time (s)", "{:.1f}", False, False),
    ("elapsed_s", "wall time incl. compile, eval (s)", "{:.1f}", False, False),
    ("peak_rss_mb", "peak RSS (MiB)", "{:.0f}", False, False),
    ("device_memory_mb", "device memory (MiB)", "{:.0f}", False, False)):
  register(Metric(_name, _label, _fmt, _higher, always=True, paired=_paired))
register(Metric("epochs_to_threshold", "epochs to threshold", "{:.0f}", kind="reach",
                always=True, paired=True))
register(Metric("seconds_to_threshold", "train seconds to threshold", "{:.1f}", kind="reach",
                always=True, paired=True))
# From evals.jsonl (runs with `eval_every_steps`): the pre-registered metric and its companion.
register(Metric(
    "steps_to_target", "steps to target", "{:.0f}", kind="reach", horizon="horizon_steps",
    unit="steps", in_steps=True,
    primary_text="Metric: **steps to the target validation loss** (the calibrated threshold), "
                 "from the evaluations in evals.jsonl. A run that never reaches the target "
                 "(*n.r.*) takes its horizon, the run's total steps. Difference A − B per seed, "
                 "paired by seed (negative: A needs fewer steps). ",
    controls_text="Steps to the target, X − control per seed (negative: the adaptive strategy "
                  "needs fewer steps), "))
register(Metric("examples_to_target", "examples to target", "{:.0f}", kind="reach"))
register(Metric("stability_evals", "stability (std val loss, last 5 evaluations)", "{:.4f}"))

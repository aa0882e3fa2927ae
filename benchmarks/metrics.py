"""The seed's metrics per run and the statistics over seeds: pure functions of the records.

Conventions, which REPORT.md repeats:

- A run *reaches* the threshold at the first epoch whose validation loss is <= the threshold.
  A run that never does is "not reached" (`None`): it is counted and shown, never averaged. Its
  place in an ordering is after every reached value, so medians and paired wins stay defined.
- *Stability* is the population standard deviation (ddof=0) of the validation loss over the last
  5 epochs of one run: a description of those five values, not an estimate.
- *Across-seed* spreads and confidence intervals use the sample standard deviation (ddof=1) and
  Student's t with n-1 degrees of freedom. With 3 seeds t(0.975, 2) = 4.30, so the 95% half-width
  is 4.30/sqrt(3) = 2.48 standard deviations.
- *Steps (examples) to target*, from `evals.jsonl` (an evaluation every `eval_every_steps`
  steps): the step (training examples seen) of the first evaluation whose validation loss is <=
  the target, the calibrated threshold. A run that never gets there is censored (`None`); the
  pre-registered test gives it its *horizon*, the run's total steps (`benchmarks.stats`).
- A run *diverged* when any recorded loss is non-finite, or an epoch's mean training loss exceeds
  `explode_factor` times the first epoch's.
"""

from collections.abc import Iterable, Mapping, Sequence
import dataclasses
import math
import statistics
import typing
from typing import Any, Optional

from scipy import stats as scipy_stats

from benchmarks import catalogue

if typing.TYPE_CHECKING:
  from train import records

LAST_EPOCHS = 5
# Adds a metric to the report's catalogue: `benchmarks.catalogue.register`, which says how.
register = catalogue.register


def finite(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def reach_index(losses: Sequence[Optional[float]], threshold: float) -> Optional[int]:
  """0-based index of the first finite loss <= threshold, or None (not reached)."""
  for i, loss in enumerate(losses):
    if finite(loss) and loss <= threshold:
      return i
  return None


def epochs_to_threshold(rows: Sequence["records.EpochRow"],
                        threshold: Optional[float]) -> Optional[int]:
  """The epoch number (1-based, as recorded) at which val_loss first reaches the threshold."""
  if threshold is None:
    return None
  i = reach_index([r.val_loss for r in rows], threshold)
  return None if i is None else int(rows[i].epoch)


def seconds_to_threshold(rows: Sequence["records.EpochRow"],
                         threshold: Optional[float]) -> Optional[float]:
  """Training-clock seconds (evaluation excluded) until the end of the reaching epoch."""
  if threshold is None:
    return None
  i = reach_index([r.val_loss for r in rows], threshold)
  return None if i is None else float(rows[i].train_time_total_s)


def _eval_reach(evals: Sequence["records.EvalRow"], target: Optional[float]):
  if target is None:
    return None
  i = reach_index([r.val_loss for r in evals], target)
  return None if i is None else evals[i]


def steps_to_target(evals: Sequence["records.EvalRow"], target: Optional[float]) -> Optional[int]:
  """The step of the first evaluation (evals.jsonl's rows) whose val_loss is <= target."""
  row = _eval_reach(evals, target)
  return None if row is None else int(row.step)


def examples_to_target(evals: Sequence["records.EvalRow"],
                       target: Optional[float]) -> Optional[int]:
  """Training examples seen at the first evaluation whose val_loss is <= target."""
  row = _eval_reach(evals, target)
  return None if row is None or row.examples is None else int(row.examples)


def horizon_steps(epochs: Sequence["records.EpochRow"],
                  evals: Sequence["records.EvalRow"]) -> Optional[int]:
  """The run's total steps: its last epoch's, else its last evaluation's (a censored run's
  steps to target in the permutation test)."""
  if epochs:
    return int(epochs[-1].step)
  return int(evals[-1].step) if evals else None


def eval_metrics(evals: Sequence["records.EvalRow"], epochs: Sequence["records.EpochRow"],
                 target: Optional[float]) -> dict:
  """The figures of a run's evals.jsonl rows: steps, examples and training-clock seconds to
  the target (None: not reached, or no target), the horizon, the number of evaluations and the
  std of the validation loss over the last 5 of them."""
  row = _eval_reach(evals, target)
  return {"steps_to_target": None if row is None else int(row.step),
          "examples_to_target": None if row is None or row.examples is None
          else int(row.examples),
          "train_seconds_to_target": None if row is None or not finite(row.train_time_s)
          else float(row.train_time_s),
          "horizon_steps": horizon_steps(epochs, evals),
          "evaluations": len(evals),
          # The seed's stability on the evaluation grid: a run of few epochs has >= 5 evaluations.
          "stability_evals": stability([r.val_loss for r in evals])}


def stability(val_losses: Sequence[Optional[float]], last: int = LAST_EPOCHS) -> Optional[float]:
  """Population std of the last `last` validation losses; None if any of them is non-finite."""
  tail = list(val_losses)[-last:]
  if not tail or not all(finite(v) for v in tail):
    return None
  return statistics.pstdev(tail)


def diverged(train_losses: Sequence[Optional[float]], val_losses: Sequence[Optional[float]],
             step_losses: Iterable[Optional[float]] = (), explode_factor: float = 2.0) -> bool:
  """Non-finite loss anywhere, or an epoch's training loss above explode_factor x the first's."""
  if not all(finite(v) for v in [*train_losses, *val_losses, *step_losses]):
    return True
  if train_losses and any(v > explode_factor * train_losses[0] for v in train_losses[1:]):
    return True
  return False


@dataclasses.dataclass(frozen=True)
class Interval:
  """Mean with a two-sided Student-t confidence interval over n values."""
  n: int
  mean: Optional[float]
  sd: Optional[float]  # sample std, ddof=1
  half_width: Optional[float]
  confidence: float = 0.95

  @property
  def low(self) -> Optional[float]:
    return None if self.half_width is None else self.mean - self.half_width

  @property
  def high(self) -> Optional[float]:
    return None if self.half_width is None else self.mean + self.half_width

  def includes_zero(self) -> Optional[bool]:
    """None when there is no interval (fewer than 2 values)."""
    if self.half_width is None:
      return None
    return self.low <= 0.0 <= self.high

  def to_json(self) -> dict:
    return {"n": self.n, "mean": self.mean, "sd": self.sd, "half_width": self.half_width,
            "low": self.low, "high": self.high, "confidence": self.confidence,
            "includes_zero": self.includes_zero()}


def t_critical(n: int, confidence: float = 0.95) -> float:
  return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))


def t_interval(values: Iterable[Optional[float]], confidence: float = 0.95) -> Interval:
  """Mean ± t(n-1) * sd / sqrt(n) over the finite values; no interval below 2 values."""
  xs = [float(v) for v in values if finite(v)]
  n = len(xs)
  if n == 0:
    return Interval(0, None, None, None, confidence)
  mean = statistics.fmean(xs)
  if n == 1:
    return Interval(1, mean, None, None, confidence)
  sd = statistics.stdev(xs)
  return Interval(n, mean, sd, t_critical(n, confidence) * sd / math.sqrt(n), confidence)


def paired_differences(values: Mapping[Any, Optional[float]],
                       baseline: Mapping[Any, Optional[float]]) -> dict[Any, float]:
  """value - baseline per seed, over the seeds where both are finite."""
  return {k: float(values[k]) - float(baseline[k]) for k in values
          if k in baseline and finite(values[k]) and finite(baseline[k])}


def paired_interval(values: Mapping[Any, Optional[float]],
                    baseline: Mapping[Any, Optional[float]],
                    confidence: float = 0.95) -> Interval:
  return t_interval(paired_differences(values, baseline).values(), confidence)


def _order(value: Optional[float]) -> float:
  return math.inf if value is None else float(value)


def median_reached(values: Sequence[Optional[float]]) -> Optional[float]:
  """Median with "not reached" ordered last; None when the median itself is "not reached"."""
  if not values:
    return None
  med = statistics.median(_order(v) for v in values)
  return None if math.isinf(med) or math.isnan(med) else med


def reached_count(values: Sequence[Optional[float]]) -> int:
  return sum(v is not None for v in values)


def paired_wins(values: Mapping[Any, Optional[float]],
                baseline: Mapping[Any, Optional[float]]) -> dict[str, int]:
  """Per seed, fewer epochs (or seconds) to the threshold than the baseline: a win.

  "Not reached" is slower than any reached value; both not reached is a tie. Nothing is averaged.
  """
  out = {"better": 0, "tie": 0, "worse": 0}
  for k in values:
    if k not in baseline:
      continue
    a, b = _order(values[k]), _order(baseline[k])
    out["better" if a < b else "worse" if a > b else "tie"] += 1
  return out


def threshold_from_reference(best_val_losses: Sequence[Optional[float]],
                             factor: float) -> float:
  """The calibration rule: median over reference seeds of the best validation loss, x factor."""
  xs = [float(v) for v in best_val_losses if finite(v)]
  if len(xs) != len(best_val_losses) or not xs:
    raise ValueError(f"reference runs: every best validation loss must be finite, got "
                     f"{list(best_val_losses)}")
  return statistics.median(xs) * factor


def select_lr(scores: Mapping[float, Sequence[Optional[float]]]) -> float:
  """The LR with the lowest mean (over tuning seeds) best validation loss.

  A tuning run that diverged or is missing scores +inf, so it never wins; ties go to the
  smaller LR.
  """
  if not scores:
    raise ValueError("select_lr: no tuning results")

  def score(lr):
    xs = scores[lr]
    if not xs or not all(finite(v) for v in xs):
      return math.inf
    return statistics.fmean(xs)

  return min(sorted(scores), key=score)


def run_metrics(epochs: Sequence["records.EpochRow"], steps: Sequence["records.StepRow"],
                test: Optional[Mapping], threshold: Optional[float], explode_factor: float = 2.0,
                bench: Optional[Mapping] = None, compile_s: Optional[float] = None,
                evals: Optional[Sequence["records.EvalRow"]] = None) -> dict:
  """Every per-run figure of the report, from one run's rows (`train.records`), its run.json's
  `test` and the runner's bench.json; with `evals` (the rows of an evals.jsonl, which runs
  before `eval_every_steps` do not have) also `eval_metrics`' figures."""
  val = [r.val_loss for r in epochs]
  train = [r.train_loss for r in epochs]
  finite_val = [(v, i) for i, v in enumerate(val) if finite(v)]
  best_loss, best_i = min(finite_val) if finite_val else (None, None)
  accs = [r.val_accuracy for r in epochs if finite(r.val_accuracy)]
  last = epochs[-1] if epochs else None
  attempts = (bench or {}).get("attempts", [])
  cpu = [a["cpu_s"] for a in attempts if finite(a.get("cpu_s"))]
  rss = [r.peak_rss_mb for r in epochs if finite(r.peak_rss_mb)]
  dev = [r.device_memory_mb for r in epochs if finite(r.device_memory_mb)]
  train_cpu = [r.cpu_time_s for r in epochs]
  out = {
      "epochs_run": len(epochs),
      "final_val_loss": None if last is None else last.val_loss,
      "best_val_loss": best_loss,
      "best_epoch": None if best_i is None else int(epochs[best_i].epoch),
      "final_val_accuracy": None if last is None else last.val_accuracy,
      "best_val_accuracy": max(accs) if accs else None,
      "test_loss": (test or {}).get("test_loss"),
      "test_accuracy": (test or {}).get("test_accuracy"),
      "threshold": threshold,
      "epochs_to_threshold": epochs_to_threshold(epochs, threshold),
      "seconds_to_threshold": seconds_to_threshold(epochs, threshold),
      "stability": stability(val),
      "diverged": diverged(train, val, [r.loss for r in steps], explode_factor),
      "train_time_s": None if last is None else last.train_time_total_s,
      "elapsed_s": None if last is None else last.elapsed_s,
      "train_cpu_s": sum(train_cpu) if train_cpu and all(finite(c) for c in train_cpu) else None,
      "process_cpu_s": sum(cpu) if cpu else None,
      "peak_rss_mb": max(rss) if rss else None,
      "device_memory_mb": max(dev) if dev else None,
      "compile_s": compile_s,
  }
  if evals is not None:
    out.update(eval_metrics(evals, epochs, threshold))
  return out

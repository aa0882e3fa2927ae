"""The anytime plot of a budgeted suite: validation loss against the budget, in steps.

`anytime_<task>.png` (`..._tuned.png` at the tuned LRs), drawn by the report for a task whose
suite declares budgets (`[tasks.T] budgets`, `benchmarks.budgets`):

- one line per horizon-free arm: at every budget B (each evaluation's step) the best validation
  loss within B (`budgets.best_val_loss_within`, the running minimum over the run's evaluations,
  `budgets.evaluations`: evals.jsonl's and each epoch's at its end), the mean
  over seeds with its 95% t band (`bands.band`);
- the horizon-knowing arms as points at their budgets: the strategy trained to H and each of its
  budget arms (`cosine`, `cosine-e2`), at its run's steps, the mean best validation loss within
  its own run with a 95% t error bar, one colour per strategy.
"""

import math
import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import bands  # noqa: E402
from benchmarks import budgets  # noqa: E402
from benchmarks import metrics  # noqa: E402


def running_best(run) -> dict:
  """{step: the best finite validation loss at that step's evaluation or before} of one run
  (`runs.RunRecord`), over `budgets.evaluations`."""
  out, best = {}, math.inf
  for r in budgets.evaluations(run):
    if metrics.finite(r.val_loss):
      best = min(best, r.val_loss)
    if best < math.inf:
      out[r.step] = best
  return out


def arms(entry: dict, strategies) -> tuple[list[str], dict]:
  """The task's horizon-free arms, and each horizon-knowing strategy -> its arms (itself first,
  then its budget arms), from results.json's `budgets` entry of the task."""
  knowing = {base: [base] + [a for a, (b, _) in entry["budgets"]["arms"].items() if b == base]
             for base in entry["budgets"]["horizon_knowing"]}
  taken = {a for group in knowing.values() for a in group}
  return [s for s in strategies if s not in taken], knowing


def points(records) -> tuple[float, float, float, float] | None:
  """(median steps, mean, low, high) of a horizon-knowing arm's best val loss within its runs."""
  values = [budgets.best_val_loss_within(budgets.evaluations(rec)) for rec in records]
  steps = [budgets.run_horizon(rec) for rec in records]
  values = [v for v in values if metrics.finite(v)]
  if not values or not all(s is not None for s in steps):
    return None
  iv = metrics.t_interval(values)
  low = iv.low if iv.low is not None else iv.mean
  high = iv.high if iv.high is not None else iv.mean
  return float(statistics.median(steps)), iv.mean, low, high


def figure(results: dict, by_strategy: dict, task: str):
  """The anytime figure of one task; `by_strategy`: strategy -> its run records.

  Two panels of the same lines and points: the whole run on the left; on the right, the budgets
  from half the shortest one on, with the y axis fitted to what is drawn there, where the arms'
  differences at the budgets are a few thousandths of a loss. The points of the horizon-knowing
  strategies at one budget are set slightly apart so that their error bars do not cover each
  other.
  """
  entry = results["tasks"][task]
  free, knowing = arms(entry, [s for s in results["strategies"] if s in by_strategy])
  order = free + list(knowing)
  colors, styles = bands.colors(order), bands.styles(order)
  bests = {s: [running_best(rec) for rec in by_strategy[s]] for s in free}
  curves = {s: bands.band_points(bests[s]) for s in free}
  marks = {base: [p for p in (points(by_strategy.get(arm, [])) for arm in group) if p]
           for base, group in knowing.items()}
  horizon = max(entry["budgets"]["steps"], default=1)
  shift = {base: (i - (len(marks) - 1) / 2) * 0.012 * horizon for i, base in enumerate(marks)}
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  for ax in axes:
    for s in free:
      bands.band(ax, bests[s], s, colors[s],
                 style={k: v for k, v in styles[s].items() if k != "marker"})
    for base, found in marks.items():
      for i, (x, mean, low, high) in enumerate(found):
        ax.errorbar([x + shift[base]], [mean], yerr=[[mean - low], [high - mean]],
                    color=colors[base], marker=styles[base]["marker"], ls="none", capsize=3,
                    markersize=7, zorder=10,
                    label=None if i else f"{base} (trained to each budget)")
    for b in entry["budgets"]["steps"]:
      ax.axvline(b, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("budget (training steps)")
  axes[0].set_ylabel("best validation loss within the budget")
  axes[0].set_title(f"{task}: anytime validation loss (lines: run once to H, read at every "
                    "budget)", fontsize=9)
  axes[0].legend(fontsize=7)
  # The right panel: from half the shortest budget on.
  left = min(entry["budgets"]["steps"], default=0) / 2
  seen = [v for xs, _, low, high in curves.values() for x, lo, hi in zip(xs, low, high)
          if x >= left for v in (lo, hi)]
  seen += [v for found in marks.values() for _, _, low, high in found for v in (low, high)]
  if seen:
    pad = 0.08 * (max(seen) - min(seen) or 0.01)
    axes[1].set_ylim(min(seen) - pad, max(seen) + pad)
  axes[1].set_xlim(left, horizon * 1.04)
  axes[1].set_title(f"the budgets from {left:g} steps on (y zoomed)", fontsize=9)
  return fig


def write(results: dict, runs: dict, task: str, setting: str, folder: pathlib.Path,
          render: bool = True) -> str | None:
  """Writes `anytime_<task>[_tuned].png` where the task declares budgets and has runs."""
  entry = results["tasks"][task]
  if "budgets" not in entry:
    return None
  by_strategy = {}
  for (s_, t, strategy, _), rec in sorted(runs.items(), key=lambda kv: kv[0][3]):
    if s_ == setting and t == task:
      by_strategy.setdefault(strategy, []).append(rec)
  if not by_strategy:
    return None
  name = f"anytime_{task}{'' if setting == 'untuned' else '_tuned'}.png"
  if render:
    fig = figure(results, by_strategy, task)
    fig.tight_layout()
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
  return name

"""The report's PNG plots (matplotlib, Agg): curves with 95% t bands, and the seed metrics' chart.

Per task:
- `val_loss_<task>.png`: validation loss against epoch per strategy, mean over seeds with a 95%
  Student-t band, and the threshold (`..._tuned.png` for the tuned LRs);
- `effective_lr_<task>.png`: the effective learning rate against step per strategy, at the LRs the
  report analyses (the tuned ones where tuning is complete);
- `gradvar_<task>.png`: gradient variability and `lr_scale` against step, for the strategies
  that have an `lr_scale` (the gradvar ones, and gns), at the same LRs;
- `summary_<task>.png` (`..._tuned.png` for the tuned LRs): epochs to threshold (per seed; "not
  reached" drawn above the axis, never averaged), stability, final validation accuracy and
  training time, mean ± 95% CI.

With a pre-registered analysis (the suite's [analysis]), the validation loss is drawn instead as
- `val_loss_steps_<task>.png`: one main panel against steps (from evals.jsonl; epochs where runs
  have none) with at most four bands, each the median and the range over seeds: the baseline,
  the best adaptive strategy, its null or replay control (dashed) and the best reference arm;
- `val_loss_grid_<task>.png`: every other strategy in a small-multiples grid, each panel with the
  baseline in grey behind it.

A task with budgets (`[tasks.T] budgets`) also gets `anytime_<task>.png` (`benchmarks.anytime`).

Strategies with the same curve stay visible: each has its own line style and marker, and a curve
drawn later is thinner than the one below it.

Whether a plot exists depends on the records alone; `render=False` decides it without drawing.
"""

import math
import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import bands  # noqa: E402
from benchmarks import declared  # noqa: E402
from benchmarks import metrics  # noqa: E402
from benchmarks import suite as suite_lib  # noqa: E402

_DPI = 110


def _series(records, key, x="epoch", rows="epochs"):
  """Per run, {x: value of `key`} over its epoch (or step) rows, fields of `train.records`."""
  return [{getattr(r, x): getattr(r, key) for r in getattr(rec, rows)} for rec in records]


def _by_strategy(runs, setting, task):
  out = {}
  for (s_, t, strategy, _), rec in sorted(runs.items(), key=lambda kv: kv[0][3]):
    if s_ == setting and t == task:
      out.setdefault(strategy, []).append(rec)
  return out


def _save(fig, path: pathlib.Path) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)
  plt.close(fig)
  return path.name


def val_loss(results, runs, task, setting, path, render=True) -> str | None:
  groups = _by_strategy(runs, setting, task)
  if not groups:
    return None
  if not render:
    return path.name
  colors = bands.colors(results["strategies"])
  styles = bands.styles(results["strategies"])
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for strategy in results["strategies"]:
    if strategy in groups:
      lr = results["tasks"][task]["settings"][setting]["strategies"][strategy]["lr"]
      bands.band(ax, _series(groups[strategy], "val_loss"), f"{strategy} (lr {lr:g})",
            colors[strategy], style=styles[strategy])
  threshold = results["tasks"][task]["threshold"]
  if threshold is not None:
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.4g}")
  ax.set(xlabel="epoch", ylabel="validation loss",
         title=f"{task}: validation loss ({setting}; mean, 95% t band over seeds)")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def effective_lr(results, runs, task, path, render=True) -> str | None:
  setting = declared.analysed_setting(results["tasks"][task])
  groups = _by_strategy(runs, setting, task)
  if not groups:
    return None
  if not render:
    series = [_series(groups[s], "effective_lr", "step", "steps")
              for s in results["strategies"] if s in groups]
    return path.name if any(bands.band_points(xs)[0] for xs in series) else None
  colors, styles = bands.colors(results["strategies"]), bands.styles(results["strategies"])
  fig, ax = plt.subplots(figsize=(8.5, 4.2))
  drawn = False
  fill = len(groups) <= 4  # more bands than that hide each other
  for strategy in results["strategies"]:
    if strategy in groups:
      drawn |= bands.band(ax, _series(groups[strategy], "effective_lr", "step", "steps"), strategy,
                     colors[strategy], log=True, style=styles[strategy], fill=fill)
  if not drawn:
    plt.close(fig)
    return None
  ax.set_yscale("log")
  ax.set(xlabel="step", ylabel="effective learning rate",
         title=f"{task} ({setting}): effective LR per step (mean over seeds"
               + (", 95% t band)" if fill else ")"))
  ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside, not over
  ax.grid(alpha=0.3, which="both")
  return _save(fig, path)


def gradvar(results, runs, task, path, render=True) -> str | None:
  setting = declared.analysed_setting(results["tasks"][task])
  groups = _by_strategy(runs, setting, task)
  chosen = [s for s in results["strategies"] if s in groups and any(
      metrics.finite(r.lr_scale) for rec in groups[s] for r in rec.steps)]
  if not chosen:
    return None
  if not render:
    return path.name
  colors = bands.colors(results["strategies"])
  # Only gradvar logs a variability; without it (gns, stationarity) the LR scale stands alone.
  varying = [s for s in chosen if any(
      metrics.finite(r.variability) for rec in groups[s] for r in rec.steps)]
  if varying:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for strategy in varying:
      bands.band(top, _series(groups[strategy], "variability", "step", "steps"), strategy,
                 colors[strategy])
    top.set(ylabel="gradient variability",
            title=f"{task} ({setting}): gradient variability, and each rule's LR scale")
    axes = (top, bottom)
  else:
    fig, bottom = plt.subplots(figsize=(7, 3.6))
    bottom.set(title=f"{task} ({setting}): each rule's LR scale")
    axes = (bottom,)
  for strategy in chosen:
    bands.band(bottom, _series(groups[strategy], "lr_scale", "step", "steps"), strategy,
               colors[strategy])
  bottom.set(xlabel="step", ylabel="lr_scale")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return _save(fig, path)


def summary(results, task, setting, path, render=True) -> str | None:
  entry = results["tasks"][task]
  groups = entry["settings"][setting]["strategies"]
  names = [s for s in results["strategies"] if s in groups and groups[s]["seeds"]]
  if not names:
    return None
  if not render:
    return path.name
  colors = bands.colors(results["strategies"])
  fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
  ax = axes[0]
  if entry["threshold"] is None:
    ax.text(0.5, 0.5, "no calibrated threshold", ha="center", va="center",
            transform=ax.transAxes)
  else:
    reached = [v for s in names
               for v in groups[s]["reach"]["epochs_to_threshold"]["values"].values()
               if v is not None]
    top = (max(reached) if reached else 1) + 1
    for i, s in enumerate(names):
      values = list(groups[s]["reach"]["epochs_to_threshold"]["values"].values())
      ys = [top if v is None else v for v in values]
      xs = [i + 0.08 * (j - (len(ys) - 1) / 2) for j in range(len(ys))]
      ax.scatter(xs, ys, color=colors[s], marker="o", zorder=3)
      nr = sum(v is None for v in values)
      if nr:
        ax.annotate(f"{nr} n.r.", (i, top), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)
    ax.axhline(top, color="0.6", ls=":", lw=1)
  ax.set(title="epochs to threshold (per seed)", xticks=range(len(names)))
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  for ax, key, title in ((axes[1], "stability", "stability (std val loss, last 5)"),
                         (axes[2], "final_val_accuracy", "final val accuracy"),
                         (axes[3], "train_time_s", "train time (s)")):
    for i, s in enumerate(names):
      iv = groups[s]["summary"][key]
      if iv["mean"] is None:
        continue
      ax.errorbar([i], [iv["mean"]], yerr=None if iv["half_width"] is None
                  else [[iv["half_width"]], [iv["half_width"]]],
                  fmt="o", color=colors[s], capsize=4)
      per_seed = [m[key] for m in groups[s]["per_seed"].values() if metrics.finite(m[key])]
      ax.scatter([i + 0.15] * len(per_seed), per_seed, color=colors[s], s=8, alpha=0.5)
    ax.set(title=title, xticks=range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle(f"{task} ({setting}): mean ± 95% t CI over seeds (dots: seeds)", fontsize=10)
  return _save(fig, path)


# The roles (`train.strategies.Spec.role`) of the main panel's adaptive strategy, and of the
# self-tuning and scheduled arms a reader compares the adaptive ones with.
ADAPTIVE_ROLES = ("adaptive",)
REFERENCE_ROLES = ("reference", "schedule")


def _with_roles(roles) -> set[str]:
  from train import strategies
  return set(strategies.names(*roles)) if roles else set()



def _rank(group: dict):
  """Fewer median steps to target first (n.r. last), then a lower mean best val loss."""
  reach = group["reach"].get("steps_to_target") or {}
  steps = reach.get("median")
  best = group["summary"]["best_val_loss"]["mean"]
  return (float("inf") if steps is None else steps, float("inf") if best is None else best)


def main_strategies(results: dict, task: str, setting: str, present) -> list[tuple[str, str]]:
  """The main panel's (role, strategy) pairs, at most four: baseline, the best adaptive
  strategy, its control (the first present in the control kinds' order, `ControlKind.rank`) and
  the best reference arm, where present."""
  groups = results["tasks"][task]["settings"][setting]["strategies"]
  present = [s for s in results["strategies"] if s in present]
  chosen = []
  if results["baseline"] in present:
    chosen.append(("baseline", results["baseline"]))
  adaptive_arms, reference_arms = _with_roles(ADAPTIVE_ROLES), _with_roles(REFERENCE_ROLES)
  adaptive = sorted((s for s in present if s in adaptive_arms), key=lambda s: _rank(groups[s]))
  if adaptive:
    best = adaptive[0]
    chosen.append(("adaptive", best))
    from train import control_kinds
    for control in (kind.name_of(best) for kind in control_kinds.ranked()):
      if control in present and suite_lib.control_of(control):
        chosen.append(("control", control))
        break
  arms = sorted((s for s in present if s in reference_arms and s != results["baseline"]),
                key=lambda s: _rank(groups[s]))
  if arms:
    chosen.append(("reference", arms[0]))
  return chosen


_ROLE_STYLE = {"baseline": {"ls": "-", "marker": "o", "lw": 3.0, "zorder": 2},
               "adaptive": {"ls": "-", "marker": "s", "lw": 2.2, "zorder": 3},
               "control": {"ls": "--", "marker": "^", "lw": 1.6, "zorder": 4},
               "reference": {"ls": "-.", "marker": "D", "lw": 1.2, "zorder": 5}}


def _range_band(ax, series: list[dict], label: str, color, style: dict) -> bool:
  """The median over seeds at the x every seed has, and the range (min to max) as a band."""
  if not series:
    return False
  common = sorted(set.intersection(*(set(d) for d in series)))
  xs, med, low, high = [], [], [], []
  for x in common:
    values = [d[x] for d in series]
    if all(metrics.finite(v) for v in values):
      xs.append(x)
      med.append(statistics.median(values))
      low.append(min(values))
      high.append(max(values))
  if not xs:
    return False
  ax.plot(xs, med, color=color, label=f"{label} (n={len(series)})",
          markevery=max(1, len(xs) // 8), markersize=4, **style)
  if len(series) > 1:
    ax.fill_between(xs, low, high, color=color, alpha=0.15, lw=0, zorder=style["zorder"] - 1)
  return True


def _loss_series(recs) -> tuple[list[dict], str]:
  """Validation loss per run against steps (evals.jsonl) or, if any run lacks it, epochs."""
  if recs and all(getattr(r, "evals", None) for r in recs):
    return [{e.step: e.val_loss for e in r.evals} for r in recs], "step"
  return _series(recs, "val_loss"), "epoch"


def main_figure(results, runs, task, setting):
  """The main panel's figure (drawn, not saved), or None when there are no runs."""
  groups = _by_strategy(runs, setting, task)
  chosen = main_strategies(results, task, setting, groups)
  if not chosen:
    return None
  colors = bands.colors(results["strategies"])
  lrs = results["tasks"][task]["settings"][setting]["strategies"]
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  xlabels = set()
  for role, strategy in chosen:
    series, xlabel = _loss_series(groups[strategy])
    xlabels.add(xlabel)
    _range_band(ax, series, f"{strategy} [{role}] (lr {lrs[strategy]['lr']:g})",
                colors[strategy], _ROLE_STYLE[role])
  threshold = results["tasks"][task]["threshold"]
  if threshold is not None:
    ax.axhline(threshold, color="k", ls=":", lw=1, label=f"target {threshold:.4g}")
  ax.set(xlabel=" / ".join(sorted(xlabels)), ylabel="validation loss",
         title=f"{task} ({setting}): median and range over seeds")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return fig


def grid_figure(results, runs, task, setting):
  """The other strategies, one small panel each over the baseline in grey; None if none."""
  groups = _by_strategy(runs, setting, task)
  main = {s for _, s in main_strategies(results, task, setting, groups)}
  rest = [s for s in results["strategies"] if s in groups and s not in main]
  if not rest:
    return None
  cols = min(4, len(rest))
  rows = math.ceil(len(rest) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True,
                           sharey=True, squeeze=False)
  colors = bands.colors(results["strategies"])
  base = results["baseline"]
  for ax, strategy in zip(axes.flat, rest):
    if base in groups:
      _range_band(ax, _loss_series(groups[base])[0], base, "0.6", _ROLE_STYLE["baseline"])
    role = "control" if suite_lib.control_of(strategy) else "adaptive"
    style = {**_ROLE_STYLE[role], "zorder": 6}
    _range_band(ax, _loss_series(groups[strategy])[0], strategy, colors[strategy], style)
    ax.set_title(strategy, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(rest):]:
    ax.set_visible(False)
  fig.suptitle(f"{task} ({setting}): the other strategies (median, range over seeds)",
               fontsize=10)
  return fig


def _steps_plots(results, runs, task, setting, folder, render) -> list:
  suffix = "" if setting == "untuned" else "_tuned"
  groups = _by_strategy(runs, setting, task)
  main = {s for _, s in main_strategies(results, task, setting, groups)}
  wanted = []
  if main:
    wanted.append((f"val_loss_steps_{task}{suffix}.png", main_figure))
  if any(s not in main for s in groups):
    wanted.append((f"val_loss_grid_{task}{suffix}.png", grid_figure))
  if not render:
    return [name for name, _ in wanted]
  return [_save(make(results, runs, task, setting), folder / name) for name, make in wanted]


def write_all(results: dict, runs: dict, folder: pathlib.Path,
              render: bool = True) -> dict[str, list[str]]:
  """Writes every plot; returns the file names per task (with `render=False`, the names only:
  nothing is drawn or written)."""
  if render:
    folder.mkdir(parents=True, exist_ok=True)
  out = {}
  steps_panels = "primaries" in results  # the suite declares an [analysis]
  for task, entry in results["tasks"].items():
    files = []
    for setting in [s for s in ("untuned", "tuned") if s in entry["settings"]]:
      if steps_panels:
        files += _steps_plots(results, runs, task, setting, folder, render)
      else:
        name = f"val_loss_{task}.png" if setting == "untuned" else f"val_loss_{task}_tuned.png"
        files.append(val_loss(results, runs, task, setting, folder / name, render))
    if "budgets" in entry:  # the suite declares budgets for the task
      from benchmarks import anytime
      files.append(anytime.write(results, runs, task, declared.analysed_setting(entry), folder,
                                 render))
    files += [effective_lr(results, runs, task, folder / f"effective_lr_{task}.png", render),
              gradvar(results, runs, task, folder / f"gradvar_{task}.png", render)]
    for setting in [s for s in ("untuned", "tuned") if s in entry["settings"]]:
      suffix = "" if setting == "untuned" else "_tuned"
      files.append(summary(results, task, setting, folder / f"summary_{task}{suffix}.png",
                           render))
    out[task] = [f for f in files if f]
  return out

"""The plots' curves: a colour and a style per strategy, and the mean over seeds with its band."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks import metrics  # noqa: E402


def colors(strategies):
  """A colour per strategy, none repeated: tab10 up to 10 strategies, beyond that tab20's dark
  shades first, then its light ones (with tab10 alone, cpu-v2's 11th strategy took the 1st's)."""
  if len(strategies) <= 10:
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i) for i, s in enumerate(strategies)}
  cmap = plt.get_cmap("tab20")
  order = list(range(0, 20, 2)) + list(range(1, 20, 2))
  return {s: cmap(order[i % 20]) for i, s in enumerate(strategies)}


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
STYLES = ("-", "--", "-.", ":")


def styles(strategies) -> dict:
  """Per strategy a line style, a marker and a width that shrinks with the drawing order, so a
  curve drawn over an identical one leaves it showing on both sides."""
  n = max(len(strategies), 1)
  return {s: {"ls": STYLES[i % len(STYLES)], "marker": MARKERS[i % len(MARKERS)],
              "lw": 1.0 + 2.0 * (n - 1 - i) / n, "zorder": 2 + i}
          for i, s in enumerate(strategies)}


def band_points(xs_by_seed: list[dict]) -> tuple[list, list, list, list]:
  """Mean over seeds at every x all seeds have where all are finite, and its 95% t band."""
  xs, mean, low, high = [], [], [], []
  if not xs_by_seed:
    return xs, mean, low, high
  common = sorted(set.intersection(*(set(d) for d in xs_by_seed)))
  for x in common:
    values = [d[x] for d in xs_by_seed]
    if not all(metrics.finite(v) for v in values):
      continue
    iv = metrics.t_interval(values)
    xs.append(x)
    mean.append(iv.mean)
    low.append(iv.low if iv.low is not None else iv.mean)
    high.append(iv.high if iv.high is not None else iv.mean)
  return xs, mean, low, high


def band(ax, xs_by_seed: list[dict], label: str, color, log: bool = False,
          style: dict | None = None, fill: bool = True) -> bool:
  """Draws `band_points`' curve and (with `fill`) its band; False if there is nothing to draw."""
  xs, mean, low, high = band_points(xs_by_seed)
  if not xs:
    return False
  style = style or {"lw": 1.6}
  if "marker" in style:
    style = {**style, "markevery": max(1, len(xs) // 8), "markersize": 4}
  ax.plot(xs, mean, color=color, label=f"{label} (n={len(xs_by_seed)})", **style)
  if fill and len(xs_by_seed) > 1:
    if log:  # a band below zero cannot be drawn on a log axis
      low = [max(l, m * 1e-3) for l, m in zip(low, mean)]
    ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0)
  return True

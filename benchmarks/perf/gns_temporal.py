"""The temporal noise estimate beside gns's exact one, over a whole suite run (issue 29, part 3).

    python -m benchmarks.perf.gns_temporal --config RUN/config.json --workdir DIR
    python -m benchmarks.perf.gns_temporal --report DIR [--out FILE]

The first form trains `gns` exactly as `python -m train --config` does (same step, same groups,
same optimizer inputs) and, at every step, also computes the temporal estimate: the current and
the previous step's mean gradients g_t, g_{t-1} (both of batch B) are taken as N = 2 groups, so
that

    S_temp  = |g_t - g_{t-1}|^2 / 2       (the noise of one batch-B gradient, tr Cov(g_B)),
    G2_temp = <g_t, g_{t-1}>              (|E g|^2),

against the exact estimator's, from the step's m groups of B/m examples (q = mean_i |g_i|^2):

    S_B    = (q - |g_t|^2) / (m - 1)      (its S / m: the same batch-B noise),
    G2     = (m |g_t|^2 - q) / (m - 1).

Both are unbiased for a stationary gradient distribution; the temporal one is biased by the drift
of E g between the two steps (the parameters moved). An observer wrapped around the strategy's
optimizer keeps g_{t-1} (one gradient-sized float32 buffer in its state), passes the gradients and
the group arguments to gns untouched, and hands each step's five scalars to the host (a
`jax.debug.callback`), which writes them to DIR/temporal.jsonl.

The `--report` form reads temporal.jsonl and reports the bias: per epoch and over the run, the
ratio of the window's means temporal / exact of the per-step S and G2, the median of their
per-step ratios (where the exact one is positive), and the median ratio of
the noise-to-signal ratio r = EMA(S_B) / EMA(G2), both smoothed exactly as gns smooths (decay 0.99
here too, gns's default; the smoothed ratio is what gns logs and acts on).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DECAY = 0.99  # gns's default decay of its two moving averages.


class TemporalState(NamedTuple):
  """The observer's state: the previous step's mean gradient and the wrapped optimizer's state."""
  prev: Any
  count: jax.Array
  inner_state: Any


def _vdot(a, b) -> jax.Array:
  return sum((jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), jnp.zeros((), jnp.float32))


def observe(inner: optax.GradientTransformationExtraArgs, sink) -> optax.GradientTransformation:
  """`inner`, unchanged, with each step's temporal and exact statistics sent to `sink(row)`."""

  def init_fn(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    return TemporalState(zeros, jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(updates, state, params=None, *, group_sq_norm=None, num_groups=None, **extra):
    g = jax.tree.map(lambda x: x.astype(jnp.float32), updates)
    stats = dict(step=state.count + 1, g2=_vdot(g, g), prev2=_vdot(state.prev, state.prev),
                 cross=_vdot(g, state.prev), q=jnp.asarray(group_sq_norm, jnp.float32),
                 m=jnp.asarray(num_groups, jnp.float32))
    jax.debug.callback(lambda **row: sink({k: float(v) for k, v in row.items()}), **stats)
    out, inner_state = inner.update(updates, state.inner_state, params,
                                    group_sq_norm=group_sq_norm, num_groups=num_groups, **extra)
    return out, TemporalState(g, state.count + 1, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def run(argv: list[str]) -> int:
  """Trains with `python -m train`'s command line, gns wrapped in the observer."""
  from train import __main__ as cli  # pylint: disable=import-outside-toplevel
  from train import strategies  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
  workdir.mkdir(parents=True, exist_ok=True)
  # A resumed run appends (the observer's previous gradient is in the checkpointed state); the
  # report keeps each step's last row.
  mode = "a" if "--resume" in argv else "w"
  out = open(workdir / "temporal.jsonl", mode, encoding="utf-8")  # pylint: disable=consider-using-with

  def sink(row):
    out.write(json.dumps(row) + "\n")
    out.flush()

  build = strategies._REGISTRY["gns"]  # pylint: disable=protected-access

  def gns_observed(args):
    strategy = build(args)
    return dataclasses.replace(strategy, optimizer=observe(strategy.optimizer, sink))

  strategies._REGISTRY["gns"] = gns_observed  # pylint: disable=protected-access
  try:
    return cli.main(argv)
  finally:
    out.close()


def _smoothed(x: np.ndarray) -> np.ndarray:
  """gns's moving average (its bias correction cancels in a ratio of two of them)."""
  out, acc = np.empty_like(x), 0.0
  for i, v in enumerate(x):
    acc = DECAY * acc + (1 - DECAY) * v
    out[i] = acc
  return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where((num > 0) & (den > 0), num / np.where(den > 0, den, 1.0), np.nan)


def _ratio_median(num: np.ndarray, den: np.ndarray) -> float | None:
  keep = (den > 0) & np.isfinite(num) & np.isfinite(den)
  return float(np.median(num[keep] / den[keep])) if keep.any() else None


def report(workdir: pathlib.Path) -> dict[str, Any]:
  """The temporal estimate's bias against the exact one, per epoch and over the run."""
  rows = [json.loads(line) for line in open(workdir / "temporal.jsonl", encoding="utf-8")]
  rows = sorted({int(r["step"]): r for r in rows}.values(), key=lambda r: r["step"])
  config = json.loads((workdir / "config.json").read_text())
  steps = np.array([r["step"] for r in rows])
  g2, prev2, cross = (np.array([r[k] for r in rows]) for k in ("g2", "prev2", "cross"))
  q, m = np.array([r["q"] for r in rows]), np.array([r["m"] for r in rows])
  s_exact = (q - g2) / (m - 1)           # the batch's noise, tr Cov(g_B)
  gg_exact = (m * g2 - q) / (m - 1)
  s_temp = (g2 + prev2 - 2 * cross) / 2  # |g_t - g_{t-1}|^2 / 2
  gg_temp = cross
  # The temporal pair exists from step 2 on.
  s_temp[0], gg_temp[0] = np.nan, np.nan
  valid = np.arange(len(rows)) > 0
  # r = EMA(S_B) / EMA(G2), where both are positive (gns caps or zeroes it elsewhere).
  r_exact = _ratio(_smoothed(s_exact), _smoothed(gg_exact))
  r_temp = np.full(len(rows), np.nan)
  r_temp[1:] = _ratio(_smoothed(s_temp[1:]), _smoothed(gg_temp[1:]))
  # Check: the exact r rebuilt here is what gns logged (where its smoothed G2 was positive).
  lines = (open(workdir / "steps.jsonl", encoding="utf-8").readlines()
           if (workdir / "steps.jsonl").exists() else [])
  logged = {json.loads(line)["step"]: json.loads(line).get("noise_to_signal") for line in lines}
  pairs = [(r, logged.get(int(s))) for s, r in zip(steps, r_exact)]
  pairs = np.array([(r, l) for r, l in pairs if l is not None and np.isfinite(r) and l > 0])
  check = float(np.max(np.abs(pairs[:, 0] / pairs[:, 1] - 1))) if len(pairs) else None
  # Epochs by the run's steps per epoch (run.json), so that an unfinished run reports its
  # finished epochs and a partial last one.
  info = workdir / "run.json"
  per_epoch = (json.loads(info.read_text()).get("steps_per_epoch") if info.exists() else None)
  per_epoch = per_epoch or max(1, len(rows) // int(config["epochs"]))
  epochs = -(-len(rows) // per_epoch)

  def summary(sel) -> dict[str, Any]:
    sel = sel & valid
    pos = sel & np.isfinite(r_exact) & np.isfinite(r_temp)
    return {
        "steps": int(sel.sum()),
        "median_ratio_S": _ratio_median(s_temp[sel], s_exact[sel]),
        "median_ratio_G2": _ratio_median(gg_temp[sel], gg_exact[sel]),
        # The bias proper: E[temporal] / E[exact], as the ratio of the window's means (a single
        # step's G2 is often negative, so the per-step ratio's median says little for G2).
        "ratio_of_means_S": float(np.mean(s_temp[sel]) / np.mean(s_exact[sel])),
        "ratio_of_means_G2": float(np.mean(gg_temp[sel]) / np.mean(gg_exact[sel])),
        "median_ratio_noise_to_signal": _ratio_median(r_temp[pos], r_exact[pos]),
        "steps_with_both_r": int(pos.sum()),
        "median_noise_to_signal_exact": float(np.median(r_exact[pos])) if pos.any() else None,
        "median_noise_to_signal_temporal": float(np.median(r_temp[pos])) if pos.any() else None,
        "fraction_G2_negative_exact": float(np.mean(gg_exact[sel] <= 0)),
        "fraction_G2_negative_temporal": float(np.mean(gg_temp[sel] <= 0)),
        "median_S_exact": float(np.median(s_exact[sel])),
        "median_S_temporal": float(np.median(s_temp[sel])),
        "median_G2_exact": float(np.median(gg_exact[sel])),
        "median_G2_temporal": float(np.median(gg_temp[sel])),
    }

  index = np.arange(len(rows))
  return {
      "task": config["task"], "lr": config["lr"], "seed": config["seed"],
      "steps": int(steps[-1]), "finished": len(rows) >= per_epoch * int(config["epochs"]),
      "groups": int(m[0]), "batch_size": int(config["batch_size"]),
      "smoothing_decay": DECAY,
      "exact_r_vs_logged_max_rel_diff": check,
      "run": summary(np.ones(len(rows), bool)),
      "per_epoch": [summary((index >= e * per_epoch) & (index < (e + 1) * per_epoch))
                    for e in range(epochs)],
  }


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--report"]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.perf.gns_temporal")
    p.add_argument("--report", required=True, type=pathlib.Path, nargs="+")
    p.add_argument("--out", type=pathlib.Path)
    args = p.parse_args(argv)
    result = [report(d) for d in args.report]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
      args.out.parent.mkdir(parents=True, exist_ok=True)
      args.out.write_text(text + "\n")
    return 0
  if "--workdir" not in argv:
    raise SystemExit("gns_temporal: pass --workdir DIR (and --config RUN/config.json), or --report")
  return run(argv)


if __name__ == "__main__":
  sys.exit(main())

"""Does the sequential grouped step's noise-to-signal agree with the vmap path's (issue 29)?

    python -m benchmarks.perf.gns_agreement NEW_RUN ARM_DIR [--seed 0] [--out FILE]

(FILE gathers the tasks: each call writes its task's entry and keeps the others.)

NEW_RUN is a run of gns on the new path (its steps.jsonl); ARM_DIR holds the committed runs of the
same arm (`seed<n>/` folders, e.g. benchmarks/results/cpu-v2/runs/rt_sentiment/gns/lr0.003), made
on the 4-microbatch vmap path, one of which (`--seed`, that of NEW_RUN) has NEW_RUN's config.

The two paths agree up to float32 summation order, so two runs of one seed follow the same
trajectory for a while and then part (training amplifies the last bits). Their step-by-step
values are therefore not compared after that; their distributions are. For each run, the summary
of log(noise_to_signal) (the smoothed ratio gns logs and acts on) over the whole run (median and
interquartile range) and per epoch (median). The yardstick is the estimator's own sampling
noise, measured as the spread of the same summaries across the committed seeds of the arm: the
difference between NEW_RUN and the committed run of its seed is set against every pairwise
difference between two committed seeds (its percentile among them, and its size in units of the
seeds' standard deviation times sqrt(2), the SD of a difference of two runs).
"""

import argparse
import itertools
import json
import math
import pathlib
import sys
from typing import Any

import numpy as np

from train import records


def _log_r(run: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  rows = records.read_steps(run / "steps.jsonl")
  keep = [r for r in rows if r.noise_to_signal is not None and r.noise_to_signal > 0]
  steps = np.array([r.step for r in keep])
  epochs = np.array([r.epoch for r in keep])
  return steps, epochs, np.log(np.array([r.noise_to_signal for r in keep]))


def summary(run: pathlib.Path) -> dict[str, Any]:
  """The run's log(noise_to_signal): median, IQR over the run, and each epoch's median."""
  steps, epochs, log_r = _log_r(run)
  q25, q50, q75 = np.percentile(log_r, [25, 50, 75])
  return {
      "steps": int(steps.size),
      "median": float(q50),
      "iqr": float(q75 - q25),
      "per_epoch_median": [float(np.median(log_r[epochs == e])) for e in np.unique(epochs)],
      "median_after_first_epoch": float(np.median(log_r[epochs > epochs.min()])),
  }


def first_divergence(a: pathlib.Path, b: pathlib.Path, rel: float = 0.01) -> int | None:
  """The first step at which the two runs' noise_to_signal differ by more than `rel`."""
  sa, _, la = _log_r(a)
  sb, _, lb = _log_r(b)
  common = dict(zip(sb.tolist(), lb.tolist()))
  for s, v in zip(sa.tolist(), la.tolist()):
    if s in common and abs(v - common[s]) > math.log1p(rel):
      return int(s)
  return None


def max_rel_diff(a: pathlib.Path, b: pathlib.Path) -> float:
  """The largest relative difference of the two runs' noise_to_signal at a common step."""
  sa, _, la = _log_r(a)
  common = dict(zip(*_log_r(b)[::2]))
  return max((abs(math.expm1(v - common[s])) for s, v in zip(sa.tolist(), la.tolist())
              if s in common), default=float("nan"))


def _compare(new: float, same_seed: float, seeds: list[float]) -> dict[str, Any]:
  diff = new - same_seed
  pairs = [abs(x - y) for x, y in itertools.combinations(seeds, 2)]
  sd = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else float("nan")
  return {
      "new": new,
      "vmap_same_seed": same_seed,
      "difference": diff,
      "vmap_seeds_min": float(min(seeds)),
      "vmap_seeds_max": float(max(seeds)),
      "vmap_seeds_sd": sd,
      "z_difference": diff / (math.sqrt(2) * sd) if sd > 0 else None,
      "percentile_among_seed_pairs": (100.0 * float(np.mean([p < abs(diff) for p in pairs]))
                                      if pairs else None),
      "new_within_seed_range": bool(min(seeds) <= new <= max(seeds)),
  }


def agreement(new_run: pathlib.Path, arm: pathlib.Path, seed: int) -> dict[str, Any]:
  runs = sorted(arm.glob("seed*"), key=lambda p: int(p.name[4:]))
  old = {int(p.name[4:]): summary(p) for p in runs if (p / "steps.jsonl").exists()}
  if seed not in old:
    raise SystemExit(f"gns_agreement: {arm} has no seed{seed}/steps.jsonl")
  new = summary(new_run)
  same = old[seed]
  seeds = list(old.values())
  n_epochs = len(new["per_epoch_median"])
  return {
      "new_run": str(new_run),
      "vmap_arm": str(arm),
      "seed": seed,
      "vmap_seeds": sorted(old),
      "log_noise_to_signal": {"new": new, "vmap_same_seed": same},
      "first_step_differing_by_1pct": first_divergence(new_run, arm / f"seed{seed}"),
      "max_rel_diff_same_step": max_rel_diff(new_run, arm / f"seed{seed}"),
      "median": _compare(new["median"], same["median"], [s["median"] for s in seeds]),
      "iqr": _compare(new["iqr"], same["iqr"], [s["iqr"] for s in seeds]),
      "median_after_first_epoch": _compare(
          new["median_after_first_epoch"], same["median_after_first_epoch"],
          [s["median_after_first_epoch"] for s in seeds]),
      "per_epoch_median": [
          _compare(new["per_epoch_median"][e], same["per_epoch_median"][e],
                   [s["per_epoch_median"][e] for s in seeds]) for e in range(n_epochs)],
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.perf.gns_agreement",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("new_run", type=pathlib.Path)
  p.add_argument("arm", type=pathlib.Path)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", type=pathlib.Path,
                 help="also write the result into this JSON file, under the run's task (the "
                      "file's other tasks are kept)")
  args = p.parse_args(argv)
  result = agreement(args.new_run, args.arm, args.seed)
  print(json.dumps(result, indent=2))
  if args.out:
    task = json.loads((args.new_run / "config.json").read_text())["task"]
    merged = json.loads(args.out.read_text()) if args.out.exists() else {}
    merged[task] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

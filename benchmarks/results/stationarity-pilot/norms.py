"""Where |x|^2 grew in a pilot run: the squared norm of each group of params at init and at the end.

The statistic's sum over a run is -(|x_end|^2 - |x_0|^2) / 2, so this splits the drift that kept
the test from passing by the kind of parameter (README.md in this folder).

Usage, from the repository root: python benchmarks/results/stationarity-pilot/norms.py RUN_DIR...
"""

import json
import pathlib
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from train import config as config_lib
from train import loop


def _group(path: str) -> str:
  """A leaf's group. In models/resnet.py every convolution (`*conv*`) feeds a BatchNorm (`*bn*`),
  so its kernel is scale-invariant; the LSTM model has neither."""
  name = path.split("/")[-1]
  if name in ("scale", "bias") and "bn" in path.lower():
    return "BatchNorm scale/bias"
  if name == "kernel" and "conv" in path.lower():
    return "conv kernels (each before a BatchNorm)"
  return "other: " + name


def _sq(tree) -> dict[str, float]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in flat:
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    out[key] = float(np.sum(np.asarray(leaf, np.float64) ** 2))
  return out


def main(runs):
  for run in map(pathlib.Path, runs):
    cfg = json.loads((run / "config.json").read_text())
    config = config_lib.Config(**{k: v for k, v in cfg.items()
                                  if k in config_lib.Config.__dataclass_fields__})
    s = loop.setup(config)
    init = _sq(s.model_spec.init(jax.random.key(config.seed))["params"])
    final = _sq(ocp.StandardCheckpointer().restore((run / "final").absolute())["params"])
    groups: dict[str, list[float]] = {}
    for key in init:
      g = _group(key)
      a = groups.setdefault(g, [0.0, 0.0])
      a[0] += init[key]
      a[1] += final[key]
    total0, total1 = sum(init.values()), sum(final.values())
    print(f"{run}: |x|^2 {total0:.1f} -> {total1:.1f} (sum of delta over the run "
          f"{-(total1 - total0) / 2:+.1f})")
    for g, (a, b) in sorted(groups.items()):
      share = 100 * (b - a) / (total1 - total0)
      print(f"  {g:34s} {a:10.1f} -> {b:10.1f}  ({b - a:+.1f}, {share:.0f}% of the growth)")


if __name__ == "__main__":
  main(sys.argv[1:])

"""Offline replay of `stationarity`'s test on subsets of the params (the runs of leaves.py).

Each run of `leaves.py` logged, per step, every leaf's term -<x + u/2, u> of fixed Adam. For a
subset S of the leaves, delta_S is the sum of its leaves' terms (float32), and this script feeds
the series to the library's own test (`gradvar_optax._batch_means.batch_means_test`) with
`reduce_on_stationarity`'s bookkeeping at the suite's options: every sample finite, the bucket the
newest ceil(count / 8) (float32, as `observe`), a test every 50 steps once it keeps >= 25, and
the composite test before the first drop. It reports the first step at which the test passes: the
first drop the rule would make on that trajectory (later drops would see another trajectory, so
only the first is read here).

Usage, from the repository root:

    PYTHONPATH=. python benchmarks/results/stationarity-pilot/replay.py [--json FILE] [RUN...]

(default: every run under leaves/runs). `--check PILOT_RUN` also compares the "all" subset's
tests with the test readouts that a real `stationarity` run logged.
"""

import argparse
import json
import lzma
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from gradvar_optax._batch_means import batch_means_test

# Jitted, as inside the library's step (and fast).
_test = jax.jit(batch_means_test, static_argnums=4)

HERE = pathlib.Path(__file__).resolve().parent
CAPACITY, TEST_EVERY, MIN_SAMPLES, KEEP, SIGNIFICANCE = 4096, 50, 25, 1 / 8, 0.05


def _is_norm_fed_kernel(path: str) -> bool:
  # models/resnet.py: every convolution (`*conv*`) feeds a BatchNorm.
  return path.endswith("/kernel") and "conv" in path


def _is_embedding(path: str) -> bool:
  return "embed" in path.split("/")[-1] or "embed" in path.split("/")[0]


def _is_head(path: str) -> bool:
  top = path.split("/")[0]
  return top in ("head", "classifier", "mlp_hidden")


# name -> rule on a leaf's path (True: the test reads it).
SUBSETS = {
    "a: all": lambda p: True,
    "b: all but embeddings and norm-fed kernels": (
        lambda p: not _is_embedding(p) and not _is_norm_fed_kernel(p)),
    "c1: head only (classifier/head, mlp_hidden)": _is_head,
    "c2: non-kernel params (biases, norm scales)": (
        lambda p: not p.endswith("kernel") and not _is_embedding(p)),
    "c3: kernels not fed to a norm, no embedding": (
        lambda p: p.endswith("kernel") and not _is_norm_fed_kernel(p)),
    "c4: norm scale/bias only": lambda p: re.search(r"(^|/)(\w*bn\w*)/", p) is not None,
    "c5: embedding only": _is_embedding,
    "c6: norm-fed kernels only": _is_norm_fed_kernel,
    # In these two models the params of ndim >= 2 are exactly the kernels and the embedding.
    "d: kernels and embeddings (ndim >= 2)": lambda p: p.endswith("kernel") or _is_embedding(p),
}


def _steps_text(run: pathlib.Path) -> str:
  # The runs' steps.jsonl (2.5 MB with 48 readouts a row) are committed xz-compressed.
  if (run / "steps.jsonl").exists():
    return (run / "steps.jsonl").read_text()
  return lzma.decompress((run / "steps.jsonl.xz").read_bytes()).decode()


def load(run: pathlib.Path):
  names = json.loads((run / "leaf_names.json").read_text())
  rows = [json.loads(line) for line in _steps_text(run).splitlines() if line]
  rows.sort(key=lambda r: r["step"])
  steps = np.array([r["step"] for r in rows])
  if not np.array_equal(steps, np.arange(1, len(rows) + 1)):
    raise ValueError(f"{run}: steps.jsonl is not one row per step 1..T")
  terms = np.array([[r["readouts"][f"leaf{i:02d}"] for i in range(len(names))] for r in rows],
                   np.float32)
  return names, terms


def replay(series: np.ndarray, first_only: bool = True):
  """The tests of `reduce_on_stationarity` on `series` (samples in order): [(step, passed,
  mean, lower, upper)], up to and including the first pass when `first_only`."""
  ring = np.zeros([CAPACITY], np.float32)
  tests = []
  count = 0
  drops = 0
  for t, d in enumerate(series.astype(np.float32), start=1):
    ring[count % CAPACITY] = d
    count += 1
    want = math.ceil(np.float32(count) * np.float32(KEEP))
    n = min(int(want), CAPACITY, count)
    if t % TEST_EVERY or n < MIN_SAMPLES:
      continue
    ok, mean, lower, upper = _test(jnp.asarray(ring), jnp.int32(count), jnp.int32(n),
                                              jnp.int32(drops), SIGNIFICANCE)
    tests.append((t, bool(ok), float(mean), float(lower), float(upper)))
    if bool(ok):
      if first_only:
        break
      drops += 1
      ring[:] = 0
      count = 0
  return tests


def subset_series(names, terms, rule):
  mask = np.array([rule(p) for p in names])
  if not mask.any():
    return None, 0
  # float32 sum, as `_delta` sums the leaves' terms
  return terms[:, mask].sum(axis=1, dtype=np.float32), int(mask.sum())


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("runs", nargs="*")
  ap.add_argument("--json")
  ap.add_argument("--check", nargs="*", default=[])
  args = ap.parse_args()
  runs = [pathlib.Path(r) for r in args.runs] or sorted(HERE.glob("leaves*/runs/*/*/*/seed*"))
  out = {}
  for run in runs:
    if not (run / "leaf_names.json").exists():
      continue
    names, terms = load(run)
    task, base, seed = run.parts[-4], run.parts[-3], run.name
    print(f"{task} {base} {seed}: {len(names)} leaves, {len(terms)} steps")
    for label, rule in SUBSETS.items():
      series, k = subset_series(names, terms, rule)
      if series is None:
        continue
      tests = replay(series)
      first = next((t[0] for t in tests if t[1]), None)
      closest = min(tests, key=lambda t: abs(t[2]) / max(t[4] - t[2], 1e-30)) if tests else None
      mean_all = float(series.mean())
      out.setdefault(task, {}).setdefault(base, {}).setdefault(seed, {})[label] = {
          "leaves": k, "first_pass": first, "tests": len(tests), "mean_delta": mean_all,
          "closest": closest}
      c = (f"closest {abs(closest[2]) / (closest[4] - closest[2]):.1f} hw at {closest[0]}"
           if closest and first is None else "")
      print(f"  {label:48s} {k:2d} leaves  first pass: {first}  mean delta {mean_all:+.3e} {c}")
  for pilot in map(pathlib.Path, args.check):
    # The pilot's own test readouts against the replay of this script's 'all' series.
    rows = [json.loads(x) for x in (pilot / "steps.jsonl").read_text().splitlines() if x]
    logged = {r["readouts"]["test_step"]: (r["readouts"]["test_mean"], r["readouts"]["test_lower"],
                                          r["readouts"]["test_upper"])
              for r in rows if r["readouts"]["test_step"] == r["step"]}
    task, seed = pilot.parts[-4], pilot.name
    mine = HERE / "leaves/runs" / task / "leaves" / pilot.parts[-2] / seed
    names, terms = load(mine)
    tests = replay(subset_series(names, terms, SUBSETS["a: all"])[0], first_only=False)
    worst = max(abs(m - logged[s][0]) / (logged[s][2] - logged[s][1]) for s, _, m, _, _ in tests)
    print(f"check {pilot}: {len(tests)} replayed tests vs {len(logged)} logged; largest "
          f"|mean difference| / interval width {worst:.2e}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
  main()

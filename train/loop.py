"""The seed's training procedure: one model, one LR strategy, per-epoch evaluation and records.

The loop is fixed; what varies between runs is the config and the strategy (AlgoPerf's split).
The training clock runs only while steps run: evaluation, logging and checkpoint I/O are not
counted in `train_time_s`, while `elapsed_s` counts everything since the start.
"""

import dataclasses
import itertools
import os
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

import models
from train import config as config_lib
from train import data
from train import records
from train import step as step_lib
from train import strategies
from train import tasks
from train.data import pipeline as pipeline_lib

# Seeds the fixed choice of a training subset; independent of the run's seed, so every strategy
# and seed trains on the same examples.
_SUBSET_SEED = 0x5EB5E7


def _subset(split: data.Split, n: int | None) -> data.Split:
  if n is None or n >= len(split):
    return split
  order = pipeline_lib.epoch_order(len(split), _SUBSET_SEED, 0)
  return data.Split(split.name, split.reader, split.indices[np.sort(order[:n])])


def _devices(config: config_lib.Config) -> list:
  devices = jax.local_devices()
  if config.num_devices is not None:
    if config.num_devices > len(devices):
      raise ValueError(f"config.num_devices: {config.num_devices} asked, {len(devices)} present")
    devices = devices[:config.num_devices]
  if config.batch_size % len(devices):
    raise ValueError(f"config.batch_size: {config.batch_size} does not divide over "
                     f"{len(devices)} devices; use a multiple of {len(devices)}")
  return devices


@dataclasses.dataclass
class Setup:
  """Everything a run builds before its first step."""
  config: config_lib.Config
  task: tasks.Task
  source: Any
  inputs: Any
  pipeline: Any
  model: Any
  model_spec: Any
  strategy: strategies.Strategy
  devices: list
  launcher: step_lib.Launcher


def setup(config: config_lib.Config) -> Setup:
  """Resolves and checks the run: data, inputs, model and optimizer. Nothing is compiled."""
  config_lib.validate(config)
  devices = _devices(config)
  task = tasks.get(config.task)
  source = data.get_source(task.source, data_dir=config.data_dir,
                           tfds_data_dir=config.tfds_data_dir)
  source = dataclasses.replace(
      source, train=_subset(source.train, config.train_examples),
      validation=_subset(source.validation, config.eval_examples), memo={})

  model_options = {**task.model_options, **config.model}
  checkpoint = model_options.pop("checkpoint", None)
  data_options = {**task.data_options, **config.data}
  if task.model == "bert" and checkpoint and "vocab_file" not in data_options:
    vocab = pathlib.Path(checkpoint) / "vocab.txt"
    if not vocab.exists():
      raise ValueError(f"config.model.checkpoint: {checkpoint} has no vocab.txt")
    data_options["vocab_file"] = str(vocab)
  try:
    spec = data.InputSpec(task.model, **data_options)
  except TypeError as e:
    raise ValueError(f"config.data: {e}") from None
  cache_dir = config.cache_dir or os.path.join(config.workdir, os.pardir, ".cache")
  inputs = data.prepare_inputs(source, spec, cache_dir=cache_dir)

  if task.model == "resnet":
    h, w, c = source.image_shape
    model_options = {"in_channels": c, "image_size": h, "axis_name": step_lib.AXIS,
                     **model_options}
  elif task.model == "lstm_attention":
    model_options = {"vocab_size": inputs.vocab_size, "unk_id": inputs.unk_id, **model_options}
  elif task.model == "bert" and not checkpoint:
    model_options = {"vocab_size": inputs.vocab_size, **model_options}
  model, model_spec = models.get(
      task.model, config.model_size, num_classes=source.num_classes, dtype=config.dtype,
      checkpoint=checkpoint, seq_len=spec.max_len if task.model != "resnet" else None,
      **model_options)

  eval_batch = config.eval_batch_size or config.batch_size * 8
  pipeline = data.Pipeline(inputs, global_batch_size=config.batch_size, seed=config.seed,
                           eval_batch_size=eval_batch, local_device_count=len(devices))
  strategy = strategies.build(config.strategy, config.lr, pipeline.steps_per_epoch,
                              config.epochs)
  return Setup(config, task, source, inputs, pipeline, model, model_spec, strategy, devices,
               step_lib.Launcher(config.parallel, devices))


def init_state(s: Setup) -> step_lib.TrainState:
  variables = s.model_spec.init(jax.random.key(s.config.seed))
  params = variables["params"]
  return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             batch_stats=variables.get("batch_stats", {}),
                             opt_state=s.strategy.optimizer.init(params))


def evaluate(s: Setup, p_eval, state, split: str, place) -> dict[str, float]:
  totals = None
  with s.pipeline.eval_iterator(split, place=place) as it:
    for batch in it:
      sums = p_eval(state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = s.launcher.get(totals)
  count = float(totals["count"])
  return {f"{split}_loss": float(totals["loss"]) / count,
          f"{split}_accuracy": float(totals["correct"]) / count, f"{split}_examples": int(count)}


def train_step(s: Setup):
  """The run's data-parallel train step under its launcher (compiled on first use)."""
  return s.launcher.train(step_lib.make_train_step(
      s.model, s.model_spec.input_names, s.strategy.optimizer, s.strategy.effective_lr))


@jax.jit
def _accumulate(acc, metrics):
  return jax.tree.map(jnp.add, acc, metrics)


def train(config: config_lib.Config) -> dict[str, Any]:
  """Runs training as configured; returns the last epoch's record plus the test metrics."""
  workdir = pathlib.Path(config.workdir)
  if (workdir / "epochs.jsonl").exists():
    raise ValueError(f"config.workdir: {workdir} already holds a run's records; use a new one")
  s = setup(config)
  recorder = records.Recorder(workdir, enabled=jax.process_index() == 0)
  if recorder.enabled:
    config.write(workdir / "config.json")
    data.save_label_names(workdir / "labels.json", s.source.label_names, source=s.source.name)
  run_info = {"config": config.to_json(), "git": records.git_commit(),
              "versions": records.versions(), "hardware": records.hardware(s.devices),
              "start": records.now(), "end": None, "steps_per_epoch": s.pipeline.steps_per_epoch,
              "train_examples": len(s.source.train),
              "validation_examples": len(s.source.validation),
              "model": {"name": s.task.model, "size": config.model_size,
                        "config": repr(s.model_spec.config)}}
  recorder.write_json("run.json", run_info)

  place = s.launcher.placement()
  p_train = train_step(s)
  p_eval = s.launcher.eval(step_lib.make_eval_step(s.model, s.model_spec.input_names))
  state = s.launcher.put_state(init_state(s))
  rng = jax.random.key(config.seed + 1)
  steps_per_epoch = s.pipeline.steps_per_epoch
  examples_per_epoch = steps_per_epoch * config.batch_size

  start = time.perf_counter()
  train_time = 0.0
  last: dict[str, Any] = {}
  with s.pipeline.train_iterator(place=place, num_epochs=config.epochs) as it:
    # Compiled ahead of the clock, on the first batch, which then trains as usual.
    first = next(it)
    t_compile = time.perf_counter()
    p_train = p_train.lower(state, first, rng).compile()
    run_info["compile_s"] = time.perf_counter() - t_compile
    batches = itertools.chain([first], it)
    for epoch in range(1, config.epochs + 1):
      cpu0, t0, io_time = time.process_time(), time.perf_counter(), 0.0
      acc, pending = None, []
      bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}",
                 disable=config.quiet, leave=False, dynamic_ncols=True)
      for i in bar:
        state, metrics = p_train(state, next(batches), rng)
        acc = metrics if acc is None else _accumulate(acc, metrics)
        global_step = (epoch - 1) * steps_per_epoch + i + 1
        if global_step % config.log_every == 0:
          pending.append((global_step, metrics))
        if len(pending) >= 50 or i == steps_per_epoch - 1:
          # The steps so far finish on the training clock; only the transfer and writing don't.
          jax.block_until_ready(metrics)
          t_io = time.perf_counter()
          rows = [{"step": st, "epoch": epoch, **{k: float(v) for k, v in
                                                   s.launcher.get(m).items()}}
                  for st, m in pending]
          recorder.steps(rows)
          if rows:
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", lr=f"{rows[-1]['effective_lr']:.2e}")
          pending = []
          io_time += time.perf_counter() - t_io
      jax.block_until_ready(state)
      epoch_train = time.perf_counter() - t0 - io_time
      cpu = time.process_time() - cpu0
      train_time += epoch_train
      means = {k: float(v) / steps_per_epoch for k, v in s.launcher.get(acc).items()}
      last_metrics = s.launcher.get(metrics)
      evaluation = evaluate(s, p_eval, state, "validation", place)
      row = {
          "epoch": epoch, "step": epoch * steps_per_epoch,
          "train_loss": means["loss"], "train_accuracy": means["accuracy"],
          "val_loss": evaluation["validation_loss"],
          "val_accuracy": evaluation["validation_accuracy"],
          "effective_lr": float(last_metrics["effective_lr"]),
          "effective_lr_mean": means["effective_lr"],
          "lr_scale": float(last_metrics["lr_scale"]), "lr_scale_mean": means["lr_scale"],
          "variability_mean": means["variability"],
          "train_time_s": epoch_train, "train_time_total_s": train_time,
          "elapsed_s": time.perf_counter() - start, "cpu_time_s": cpu,
          "examples_per_s": examples_per_epoch / epoch_train,
          "peak_rss_mb": records.peak_rss_mb(),
          "device_memory_mb": records.device_memory_mb(s.devices),
      }
      recorder.epoch(row)
      if not config.quiet:
        tqdm.write(f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss "
                   f"{row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} lr "
                   f"{row['effective_lr']:.2e} ({epoch_train:.1f}s)")
      last = row

  test = evaluate(s, p_eval, state, "test", place)
  final = s.launcher.get({"params": state.params, "batch_stats": state.batch_stats})
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save((workdir / "final").absolute(), final, force=True)
  run_info.update(end=records.now(), test=test)
  recorder.write_json("run.json", run_info)
  recorder.close()
  return {**last, **test}

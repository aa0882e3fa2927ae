"""The seed's training procedure: one model, one LR strategy, per-epoch evaluation and records.

The loop is fixed; what varies between runs is the config and the strategy (AlgoPerf's split).
`train.epoch` runs each epoch and `train.clock` keeps the time: the training clock runs only while
steps run, so evaluation, logging and checkpoint I/O are not counted in `train_time_s`, while
`elapsed_s` counts everything since the start.

With `eval_every_steps` K the run also evaluates every K steps (`train.epoch`), one row of
`evals.jsonl` each. A strategy's `eval_params` gives the params that evaluation and the saved
final params use (see `eval_view`); its `observe_eval` sees the validation losses.

A run checkpoints after every epoch (and every `checkpoint_every_steps` steps, and on SIGTERM or
SIGINT) into `<workdir>/checkpoints` (see `train.checkpoint`); `train(config, resume=True)`
continues from the latest good one exactly as if it had never stopped: same state, same batches,
same epoch sums, same clocks, records cut back to the checkpoint. Non-finite steps stop the run
before anything non-finite is saved, or, with `skip_nonfinite`, are skipped and counted.

Interruptions. The first SIGTERM or SIGINT (one process) makes the run save at the next step
boundary and raise `checkpoint.Preempted` (at an epoch's last step: after that epoch's record).
The handler then gives the signal back to its previous handler, so a second one before that save
acts as it would without the loop: a second Ctrl-C raises `KeyboardInterrupt` at once, nothing is
saved for it, and `python -m train` dies of SIGINT (exit status 130 in a shell); the checkpoints
before it are kept.

Test-only: the environment variable `GRADVAR_TEST_SIGNALS` (no user sets it) raises signals in the
training process itself, right after a given step completes and before that step's boundary is
handled, so that tests interrupt at an exact step instead of racing the run from outside. Its
syntax is `NAME@STEP[,NAME@STEP...]` with a signal name and a global step >= 1, e.g.
`SIGTERM@12`, `SIGINT@5,SIGINT@5` (two Ctrl-C before the save) or `SIGKILL@4` (a real kill -9 at
step 4); signals at the same step are raised in the order given.
"""

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import models
from train import checkpoint as checkpoint_lib
from train import clock as clock_lib
from train import config as config_lib
from train import data
from train import epoch as epoch_lib
from train import evaluation
from train import records
from train import resume as resume_lib
from train import step as step_lib
from train import strategies
from train import tasks
from train import watchdog
from train.data import pipeline as pipeline_lib

# Seeds the fixed choice of a training subset; independent of the run's seed, so every strategy
# and seed trains on the same examples.
_SUBSET_SEED = 0x5EB5E7
# With `skip_nonfinite`, optax.apply_if_finite skips this many non-finite steps in a row, then
# gives up (applies one) and the run stops (`train.epoch` checks).
MAX_CONSECUTIVE_NONFINITE = epoch_lib.MAX_CONSECUTIVE_NONFINITE
NonFiniteError = epoch_lib.NonFiniteError
BN_BATCHES = evaluation.BN_BATCHES
evaluate, eval_view = evaluation.evaluate, evaluation.eval_view
make_batch_stats_step = evaluation.make_batch_stats_step


def subset(split: data.Split, n: int | None) -> data.Split:
  """The first `n` examples of `split` in a fixed shuffled order (all of it for None): the
  `train_examples` / `eval_examples` subsets of a run, which `benchmarks.regime` reads too."""
  if n is None or n >= len(split):
    return split
  order = pipeline_lib.epoch_order(len(split), _SUBSET_SEED, 0)
  return data.Split(split.name, split.reader, split.indices[np.sort(order[:n])])


def _devices(config: config_lib.Config) -> list:
  """The run's devices: the first `num_devices` local ones (default: all) of every process."""
  local = len(jax.local_devices())
  n = local if config.num_devices is None else config.num_devices
  if n > local:
    raise ValueError(f"config.num_devices: {n} asked, {local} present")
  devices = [d for p in range(jax.process_count())
             for d in jax.local_devices(process_index=p)[:n]]
  if config.batch_size % len(devices):
    processes = f" ({jax.process_count()} processes x {n})" if jax.process_count() > 1 else ""
    raise ValueError(f"config.batch_size: {config.batch_size} does not divide over "
                     f"{len(devices)} devices{processes}; use a multiple of {len(devices)}")
  return devices


def _check_groups(config: config_lib.Config, num_devices: int) -> None:
  """`gns_groups` for a strategy that uses the gradient's groups (the others ignore it)."""
  groups = config.gns_groups
  if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
    raise ValueError(f"config.gns_groups: the {config.strategy!r} strategy splits the global "
                     f"batch into gns_groups groups, at least 2; got {groups!r}")
  if groups % num_devices:
    raise ValueError(f"config.gns_groups: {groups} groups do not divide over the run's "
                     f"{num_devices} devices (each device takes gns_groups / {num_devices} "
                     f"microbatches); use a multiple of {num_devices}")
  if config.batch_size % groups:
    raise ValueError(f"config.gns_groups: the global batch of {config.batch_size} "
                     f"(config.batch_size) does not split into {groups} equal groups; use a "
                     f"divisor of {config.batch_size}")


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
  # The strategy's optimizer with `optax.apply_if_finite`'s state, always (`finite_guard`): it
  # skips non-finite steps with `skip_nonfinite` (up to MAX_CONSECUTIVE_NONFINITE in a row).
  optimizer: optax.GradientTransformationExtraArgs
  devices: list
  launcher: step_lib.Launcher
  # Microbatches per device of a grouped step (`step_lib.make_train_step`), None for the plain one.
  microbatches: int | None = None


def setup(config: config_lib.Config) -> Setup:
  """Resolves and checks the run: data, inputs, model and optimizer. Nothing is compiled."""
  config_lib.validate(config)
  devices = _devices(config)
  task = tasks.resolve(config.task, config.model_family)
  family = models.family(task.model)
  source = data.get_source(task.source, data_dir=config.data_dir,
                           tfds_data_dir=config.tfds_data_dir)
  source = dataclasses.replace(
      source, train=subset(source.train, config.train_examples),
      validation=subset(source.validation, config.eval_examples), memo={})

  model_options = {**task.model_options, **config.model}
  try:
    checkpoint = models.resolve_checkpoint(model_options.pop("checkpoint", None))
  except ValueError as e:
    raise ValueError(f"config.model.checkpoint: {e}") from None
  data_options = {**task.data_options, **config.data}
  if checkpoint and family.checkpoint_data_options is not None:
    try:
      data_options.update(family.checkpoint_data_options(checkpoint, data_options))
    except ValueError as e:
      raise ValueError(f"config.model.checkpoint: {e}") from None
  try:
    options = data.InputOptions(task.model, **data_options)
  except TypeError as e:
    raise ValueError(f"config.data: {e}") from None
  cache_dir = config.cache_dir or os.path.join(config.workdir, os.pardir, ".cache")
  inputs = data.prepare_inputs(source, options, cache_dir=cache_dir)

  eval_batch = config.eval_batch_size or config.batch_size * 8
  # Each process reads its own block of every global batch (the pipeline asks jax which).
  pipeline = data.Pipeline(inputs, global_batch_size=config.batch_size, seed=config.seed,
                           eval_batch_size=eval_batch,
                           local_device_count=len(devices) // jax.process_count())
  strategy = strategies.build(config.strategy, strategies.StrategyArgs(
      config.lr, pipeline.steps_per_epoch, config.epochs, seed=config.seed,
      replay_from=config.replay_from, warmup_steps=config.warmup_steps,
      group_every=config.gns_every))
  optimizer = finite_guard(strategy.optimizer, config.skip_nonfinite)
  grouped = strategy.uses_groups or (strategy.batchnorm_groups and family.has_batch_stats)
  if grouped:
    _check_groups(config, len(devices))
  facts = models.DataFacts(
      num_classes=source.num_classes, image_shape=source.image_shape,
      vocab_size=inputs.vocab_size, pad_id=inputs.pad_id, unk_id=inputs.unk_id,
      checkpoint=checkpoint, axis_name=step_lib.model_axis_name(grouped))
  model_options = {**family.model_options(facts), **model_options}
  model, model_spec = models.get(
      task.model, config.model_size, num_classes=source.num_classes, dtype=config.dtype,
      checkpoint=checkpoint, seq_len=options.max_len, **model_options)
  return Setup(config, task, source, inputs, pipeline, model, model_spec, strategy, optimizer,
               devices, step_lib.Launcher(config.parallel, devices),
               config.gns_groups // len(devices) if grouped else None)


def finite_guard(inner: optax.GradientTransformation, skip: bool
                 ) -> optax.GradientTransformationExtraArgs:
  """`inner` with `optax.apply_if_finite`'s state around its own, whether it skips or not.

  With `skip`, `optax.apply_if_finite(inner, MAX_CONSECUTIVE_NONFINITE)`. Without, the same
  `init` (so a checkpoint has one layout either way) and `inner`'s update as it is, the counters
  left at 0: `apply_if_finite` runs the update in a `lax.cond`, whose branch XLA compiles apart
  from the step around it, and a run that does not skip must stay the computation it was.
  """
  wrapped = optax.apply_if_finite(inner, MAX_CONSECUTIVE_NONFINITE)
  if skip:
    return wrapped
  inner = optax.with_extra_args_support(inner)

  def update(updates, state, params=None, **extra_args):
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    return updates, state._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(wrapped.init, update)


def init_state(s: Setup) -> step_lib.TrainState:
  variables = s.model_spec.init(jax.random.key(s.config.seed))
  params = variables["params"]
  return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             batch_stats=variables.get("batch_stats", {}),
                             opt_state=s.optimizer.init(params))


def train_step(s: Setup):
  """The run's data-parallel train step under its launcher (compiled on first use)."""
  # gns gets gns_groups groups (microbatches per device) and their gradients; its controls on a
  # BatchNorm model get the same groups' statistics and one gradient (`Strategy`).
  # The strategy's effective LR and readouts read its own optimizer's state, inside
  # `apply_if_finite`'s.
  lr = s.strategy.effective_lr
  readouts = {k: (lambda state, read=r.read: read(state.inner_state))
              for k, r in s.strategy.spec.readouts.items()}
  return s.launcher.train(step_lib.make_train_step(
      s.model, s.model_spec.input_names, s.optimizer,
      lambda before, after, step: lr(before.inner_state, after.inner_state, step),
      microbatches=s.microbatches, group_grads=s.strategy.uses_groups, readouts=readouts,
      update_args=s.strategy.spec.update_args,
      group_every=s.config.gns_every if s.microbatches else 1))


RESUME_MODES = resume_lib.RESUME_MODES
_RUN_FILES = ("run.json", "epochs.jsonl", "steps.jsonl", "evals.jsonl", "checkpoints")


def _run_info(s: Setup, workdir: pathlib.Path, resumed: dict | None) -> dict[str, Any]:
  config = s.config
  info = {"config": config.to_json(), "git": records.git_commit(),
          "versions": records.versions(), "hardware": records.hardware(s.devices),
          "start": records.now(), "end": None, "steps_per_epoch": s.pipeline.steps_per_epoch,
          "train_examples": len(s.source.train),
          "validation_examples": len(s.source.validation),
          "model": {"name": s.task.model, "size": config.model_size,
                    "config": repr(s.model_spec.config)}}
  path = workdir / "run.json"
  if resumed is not None and path.exists():
    # The first start's fields stay; each resume is listed with what it ran on.
    previous = json.loads(path.read_text())
    info = {**previous, "config": info["config"], "end": None}
    info["resumes"] = previous.get("resumes", []) + [
        {"time": records.now(), **resumed, "git": records.git_commit(),
         "hardware": records.hardware(s.devices)}]
    info.pop("stopped", None)
  return info


def train(config: config_lib.Config, resume: bool | str = False) -> dict[str, Any]:
  """Runs training as configured; returns the last epoch's record plus the test metrics.

  Args:
    config: the run.
    resume: False: the workdir must not hold a run yet. True or "latest": continue from the
      latest good checkpoint in `<workdir>/checkpoints` (`ValueError` if there is none, or if the
      config differs in a field that changes the trajectory). "allow-fresh": the same, but start
      over (removing the old records) when no checkpoint is usable.

  Raises:
    ValueError: a bad config, a workdir that already holds a run, or a refused resume
      (`checkpoint.NoCheckpointError` when no checkpoint is usable).
    checkpoint.Preempted: SIGTERM or SIGINT arrived; a checkpoint was saved at the next step
      boundary (at an epoch's last step: after that epoch's evaluation and record).
    NonFiniteError: a non-finite loss or gradient (without `skip_nonfinite`), or more than
      `MAX_CONSECUTIVE_NONFINITE` in a row (with it); nothing after the last good checkpoint
      was saved.
  """
  mode = resume_lib.resume_mode(resume)
  signals = epoch_lib.parse_test_signals(os.environ.get(epoch_lib.TEST_SIGNALS_ENV))
  workdir = pathlib.Path(config.workdir)
  present = [name for name in _RUN_FILES if (workdir / name).exists()]
  if present and mode is None:
    raise ValueError(f"config.workdir: {workdir} already holds a run ({', '.join(present)}); "
                     "resume it (--resume) or use a new workdir")
  s = setup(config)
  if jax.process_count() > 1:
    # Every process has looked at the workdir before any of them writes to it.
    multihost_utils.sync_global_devices("train: workdir checked")
  ckpts = checkpoint_lib.Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
  try:
    state, rng, position, resumed = resume_lib.start(s, workdir, ckpts, mode, present,
                                                     lambda: init_state(s))
    return _train(s, workdir, ckpts, state, rng, position, resumed, signals)
  finally:
    ckpts.close()


def _train(s: Setup, workdir: pathlib.Path, ckpts: checkpoint_lib.Checkpoints, state, rng,
           position: resume_lib.Position, resumed: dict | None, signals: dict) -> dict[str, Any]:
  config = s.config
  recorder = records.Recorder(workdir, enabled=jax.process_index() == 0)
  run_info = _start_records(s, workdir, recorder, resumed)
  place = s.launcher.placement()
  p_eval = s.launcher.eval(step_lib.make_eval_step(s.model, s.model_spec.input_names))
  steps = epoch_lib.Steps(
      train=train_step(s), evaluate=functools.partial(evaluate, s, p_eval, place=place),
      eval_view=eval_view(s, place),
      observe_eval=epoch_lib.observer(s.launcher, s.strategy.observe_eval))
  run = epoch_lib.Run(
      s, recorder, ckpts, steps, state=s.launcher.put_state(state), rng=rng,
      clock=clock_lib.Clock(position.clock), step=position.step,
      epochs_done=position.epochs_done, sums=epoch_lib.EpochSums.from_json(position.epoch_acc),
      last_row=position.last_row)
  try:
    with run.watch, watchdog.watch(config.collective_timeout_s, jax.process_index()), \
        s.pipeline.train_iterator(state=position.data, place=place,
                                  num_epochs=config.epochs) as run.data:
      compile_s = run.compile(signals)
      if compile_s is not None:
        run_info["compile_s"] = compile_s
      for epoch in range(run.epochs_done + 1, config.epochs + 1):
        stop = epoch_lib.run_epoch(run, epoch)
        if stop is not None and epoch < config.epochs:
          raise checkpoint_lib.Preempted(stop, run.step, epoch, ckpts.directory)
      # The test evaluation and the final save are collectives too: under the watchdog, from a
      # beat of their own, a stall there ends the process with the watchdog's report, as one in
      # a step does, instead of hanging (a 2-process CI run once waited in the test split's
      # evaluation until the test's own bound). The records close first, as they did before.
      recorder.close()
      watchdog.beat(run.step)
      result = _finish(run, workdir, run_info)
  except (checkpoint_lib.Preempted, NonFiniteError) as e:
    reason = e.signal_name if isinstance(e, checkpoint_lib.Preempted) else str(e)
    run_info["stopped"] = {"reason": reason, "step": e.step, "epoch": e.epoch,
                           "time": records.now()}
    recorder.write_json("run.json", run_info)
    raise
  finally:
    recorder.close()
  return result


def _start_records(s: Setup, workdir: pathlib.Path, recorder: records.Recorder,
                   resumed: dict | None) -> dict[str, Any]:
  """Writes the run's config, labels and `run.json`; returns the latter's contents."""
  if recorder.enabled:
    s.config.write(workdir / "config.json")
    data.save_label_names(workdir / "labels.json", s.source.label_names, source=s.source.name)
  run_info = _run_info(s, workdir, resumed)
  recorder.write_json("run.json", run_info)
  return run_info


def _finish(run: epoch_lib.Run, workdir: pathlib.Path, run_info: dict[str, Any]
            ) -> dict[str, Any]:
  """Tests the final state and saves its params (both at the strategy's eval params); returns
  the last epoch's row and the test."""
  view = run.steps.eval_view(run.state)
  test = run.steps.evaluate(view, "test")
  final = run.s.launcher.get({"params": view.params, "batch_stats": view.batch_stats})
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save((workdir / "final").absolute(), final, force=True)
  run_info.update(end=records.now(), test=test)
  run.recorder.write_json("run.json", run_info)
  return {**run.last_row, **test}

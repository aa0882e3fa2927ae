"""The gns strategy in the suite: the step's groups, `gns_groups`, and `noise_to_signal` records.

The library's own tests (tests/test_gradvar_gns.py) check the estimator; these check the train
step that feeds it: the same groups laid out over 1 device or 4 give the same run, each group's
gradient is its own examples' alone (BatchNorm included), the strategies that ignore the groups
record what they did before, and a bad `gns_groups` is refused.
"""

import json
import math
import pathlib
import re

import isolate
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_file_loader

import models
from train import __main__ as cli
from train import config as config_lib
from train import controls
from train import loop
from train import records
from train import step as step_lib

# The steps.jsonl keys of a strategy without readouts.
STEP_FIELDS = {"step", "epoch", "loss", "accuracy", "grad_norm", "effective_lr"}


def _config(tmp_path, task, **kw):
  # 16 x 5 examples: 5 steps an epoch, 10 in all; gns's warmup (cosine's) is then 1 step.
  base = dict(task=task, workdir=str(tmp_path / "run"), strategy="gns", model_size="tiny",
              epochs=2, batch_size=16, train_examples=80, eval_examples=16, log_every=1,
              quiet=True, cache_dir=str(tmp_path / "cache"))
  base.update(kw)
  return config_lib.Config(**base)


def _steps(workdir):
  return records.read_steps(pathlib.Path(workdir) / "steps.jsonl")


@pytest.mark.slow
def test_one_device_and_four_give_the_same_gns_run(tmp_path, data_dir):
  """4 groups as 1 device x 4 microbatches (pmap) and as 4 devices x 1 (shard_map).

  BERT has dropout, so this also checks that microbatch i on device r draws replica r*m+i's key.
  """
  runs = {}
  for n, parallel in ((1, "pmap"), (4, "shard_map")):
    config = _config(tmp_path / str(n), "wordnet_topics", data_dir=str(data_dir), num_devices=n,
                     parallel=parallel, gns_groups=4, cache_dir=str(tmp_path / "cache"))
    loop.train(config)
    runs[n] = _steps(config.workdir)
  assert [r.step for r in runs[1]] == [r.step for r in runs[4]] == list(range(1, 11))
  for field in ("lr_scale", "noise_to_signal", "loss", "effective_lr"):
    one, four = ([getattr(r, field) for r in runs[n]] for n in (1, 4))
    np.testing.assert_allclose(one, four, rtol=1e-5, err_msg=field)
  scales = [r.lr_scale for r in runs[1]]
  ratios = [r.noise_to_signal for r in runs[1]]
  # Not vacuous: the scale moved after the 1-step warmup, on a finite, positive ratio.
  assert min(scales) < 1.0 and max(scales) <= 1.0
  assert all(math.isfinite(r) and 0 < r < 1e6 for r in ratios)
  workdir = pathlib.Path(config.workdir)
  events = list((workdir / "tb").glob("events.out.tfevents.*"))
  tags = {v.tag for e in event_file_loader.EventFileLoader(str(events[0])).Load()
          for v in e.summary.value}
  assert {"step/noise_to_signal", "epoch/noise_to_signal_mean"} <= tags
  epochs = records.read_epochs(workdir / "epochs.jsonl")
  np.testing.assert_allclose([e.noise_to_signal_mean for e in epochs],
                             [np.mean(ratios[:5]), np.mean(ratios[5:])], rtol=1e-5)


@pytest.mark.slow
def test_resnet_with_batchnorm_trains_with_gns(request, tmp_path):
  # 4 devices sharing 2 cores and ResNet's synced BatchNorm: the multi-host tests' XLA flags.
  if isolate.rerun(request, devices=4):
    return
  data_dir = request.getfixturevalue("data_dir")
  config = _config(tmp_path, "fashion_mnist", data_dir=str(data_dir), num_devices=2,
                   gns_groups=4, epochs=1)
  loop.train(config)
  steps = _steps(config.workdir)
  assert len(steps) == 5 and all(math.isfinite(r.loss) and math.isfinite(r.noise_to_signal)
                                 for r in steps)
  assert all(r.lr_scale is not None and r.variability is None for r in steps)
  # The BatchNorm running averages moved and stayed finite.
  with ocp.StandardCheckpointer() as ckptr:
    final = ckptr.restore(pathlib.Path(config.workdir, "final").absolute())
  stats = jax.tree.leaves(final["batch_stats"])
  assert stats and all(np.all(np.isfinite(x)) for x in stats)
  means = [x for p, x in jax.tree_util.tree_leaves_with_path(final["batch_stats"])
           if "mean" in jax.tree_util.keystr(p)]
  assert any(np.any(x != 0) for x in means)
  run = json.loads((pathlib.Path(config.workdir) / "run.json").read_text())
  assert run["records_schema"] == records.SCHEMA_VERSION


def _capture():
  """An 'optimizer' that keeps the gradient and the groups it was handed, and moves nothing."""

  def init(params):
    return {"grads": jax.tree.map(jnp.zeros_like, params), "q": jnp.zeros(()),
            "n": jnp.zeros((), jnp.int32)}

  def update(grads, state, params=None, *, group_sq_norm, num_groups, **extra):
    del state, params, extra
    return (jax.tree.map(jnp.zeros_like, grads),
            {"grads": grads, "q": group_sq_norm, "n": jnp.asarray(num_groups, jnp.int32)})

  return optax.GradientTransformationExtraArgs(init, update)


def _resnet(grouped):
  return models.get("resnet", "tiny", num_classes=10, in_channels=1, image_size=28,
                    axis_name=step_lib.model_axis_name(grouped))


def _resnet_step(microbatches, devices, batch, group_grads=True, group_every=1, steps=None):
  """One train step of ResNet tiny (BatchNorm) under pmap; returns the state and metrics.

  With `steps`, that many steps from the same state and batch: a list of (state, metrics).
  """
  model, spec = _resnet(microbatches is not None)
  variables = spec.init(jax.random.key(0))
  opt = _capture()
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                              variables["batch_stats"], opt.init(variables["params"]))
  launcher = step_lib.Launcher("pmap", devices)
  fn = launcher.train(step_lib.make_train_step(
      model, spec.input_names, opt, lambda before, after, step: jnp.float32(0),
      microbatches=microbatches, group_grads=group_grads, update_args=step_lib.UPDATE_ARGS,
      group_every=group_every))
  local = jax.tree.map(lambda x: x.reshape((len(devices), -1) + x.shape[1:]), batch)
  if steps is None:
    new, metrics = fn(launcher.put_state(state), local, jax.random.key(1))
    return launcher.get(new), launcher.get(metrics)
  out, placed = [], launcher.put_state(state)
  for _ in range(steps):
    placed, metrics = fn(placed, local, jax.random.key(1))
    out.append((launcher.get(placed), launcher.get(metrics)))
  return out


def _alone(batch, groups):
  """Each group's gradient and new running averages, from its own examples alone (no vmap, no
  collectives): what independent groups must give."""
  model, spec = _resnet(True)
  variables = spec.init(jax.random.key(0))

  def loss(params, image, label):
    logits, new = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                              image, train=True, mutable=["batch_stats"])
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, label).mean(), new

  grad = jax.jit(jax.grad(loss, has_aux=True))
  out = [grad(variables["params"], image, label)
         for image, label in zip(np.split(batch["image"], groups),
                                 np.split(batch["label"], groups))]
  return [g for g, _ in out], [new["batch_stats"] for _, new in out]


@pytest.mark.slow
def test_the_grouped_step_normalises_each_group_over_its_own_examples():
  """Each group's gradient is the one its own examples give alone, so the groups are the
  independent samples gns's estimator assumes (issue 19: whole-batch BatchNorm statistics
  coupled them, inflated q and left the signal estimate negative on cpu-v2's ResNet).

  2 devices x 2 microbatches: the mean gradient, q = mean |g_i|^2 and the mean running averages
  of the 4 groups computed apart (the device axis's mean included); gns's controls (one gradient
  of the groups' mean loss) get the same gradient and running averages. That the layout of the
  groups over the devices does not matter is test_one_device_and_four_give_the_same_gns_run's.
  """
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((16, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  grads, stats = _alone(batch, 4)
  mean = lambda trees: jax.tree.map(lambda *x: np.mean(x, 0), *trees)
  want_q = np.mean([float(optax.tree.norm(g)) ** 2 for g in grads])
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  grouped, metrics = _resnet_step(2, jax.devices()[:2], batch)
  jax.tree.map(close, grouped.opt_state["grads"], mean(grads))
  jax.tree.map(close, grouped.batch_stats, mean(stats))
  assert int(grouped.opt_state["n"]) == 4
  close(grouped.opt_state["q"], want_q)
  control, control_metrics = _resnet_step(2, jax.devices()[:2], batch, group_grads=False)
  jax.tree.map(close, control.opt_state["grads"], mean(grads))
  jax.tree.map(close, control.batch_stats, mean(stats))
  assert int(control.opt_state["n"]) == 2  # one group per device
  for key in ("loss", "accuracy", "grad_norm"):
    close(control_metrics[key], metrics[key])
  # Not vacuous: the whole batch's statistics give another gradient, and a plain step's q is its
  # one group's squared norm.
  plain, plain_metrics = _resnet_step(None, jax.devices()[:1], batch)
  assert int(plain.opt_state["n"]) == 1
  close(plain.opt_state["q"], float(plain_metrics["grad_norm"]) ** 2)
  assert not np.allclose(float(plain_metrics["grad_norm"]), float(metrics["grad_norm"]),
                         rtol=1e-2)


@pytest.mark.parametrize("groups, devices, message", [
    (3, 2, "3 groups do not divide over the run's 2 devices.*multiple of 2"),
    (1, 1, "at least 2; got 1"),
    (12, 2, "global batch of 16 .*does not split into 12 equal groups"),
])
def test_a_bad_gns_groups_is_refused_naming_the_field(groups, devices, message, tmp_path,
                                                      data_dir, capsys):
  argv = ["--task", "fashion_mnist", "--workdir", str(tmp_path / "w"), "--strategy", "gns",
          "--batch-size", "16", "--num-devices", str(devices), "--gns-groups", str(groups),
          "--model-size", "tiny", "--data-dir", str(data_dir), "--quiet"]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "config.gns_groups" in err
  assert re.search(message, err), err
  # Refused before the run wrote anything (the default cache, w/../.cache, makes w itself).
  assert not list((tmp_path / "w").glob("*"))


def test_other_strategies_ignore_gns_groups(tmp_path, data_dir):
  config = _config(tmp_path, "fashion_mnist", data_dir=str(data_dir), strategy="fixed",
                   num_devices=2, gns_groups=3)
  s = loop.setup(config)  # no error: only gns and its controls split the batch into groups
  assert not s.strategy.uses_groups and s.microbatches is None
  assert s.model_spec.config.axis_name == step_lib.AXIS


@pytest.mark.parametrize("strategy, task, microbatches", [
    ("gns", "fashion_mnist", 2), ("gns", "rt_sentiment", 2),
    # gns's controls normalise over its groups on BatchNorm models, and keep the plain step
    # where there is no BatchNorm.
    ("replay-gns", "fashion_mnist", 2), ("matched-gns", "fashion_mnist", 2),
    ("replay-gns", "rt_sentiment", None), ("matched-gns", "rt_sentiment", None),
    ("replay-gradvar", "fashion_mnist", None),
])
def test_which_strategies_take_the_grouped_step(strategy, task, microbatches, tmp_path,
                                                data_dir, monkeypatch):
  # The replays' path is not what this checks: a constant one stands in for a recorded run's.
  monkeypatch.setattr(controls, "read_path", lambda folder, total, of: np.full(total, 1e-3))
  config = _config(tmp_path, task, data_dir=str(data_dir), strategy=strategy, num_devices=2,
                   gns_groups=4,
                   replay_from=str(tmp_path / "unused") if "replay" in strategy else None)
  s = loop.setup(config)
  assert s.microbatches == microbatches
  if s.model_spec.has_batch_stats:
    assert s.model_spec.config.axis_name == (None if microbatches else step_lib.AXIS)


def test_gns_every_k_observes_the_kth_steps_only(tmp_path, data_dir):
  """`gns_every` 3 over 10 steps: the groups on steps 0, 3, 6 and 9, so gns counts 4 steps, and
  the other 6 are neither counted nor skipped."""
  config = _config(tmp_path, "rt_sentiment", data_dir=str(data_dir), gns_groups=4, gns_every=3,
                   num_devices=1)
  loop.train(config)
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(pathlib.Path(config.workdir, "checkpoints", "10", "state").absolute())
  gns_state = saved["train"]["opt_state"]["inner_state"]
  assert (int(gns_state["count"]), int(gns_state["skipped"])) == (4, 0)
  assert len(_steps(config.workdir)) == 10
  with pytest.raises(ValueError, match="gns_every"):
    config_lib.validate(_config(tmp_path / "k0", "rt_sentiment", gns_every=0))


@pytest.mark.slow
def test_every_kth_step_on_two_devices_under_pmap_and_shard_map(tmp_path, data_dir):
  """`gns_every` 2 on 2 devices of a BatchNorm model: the cond holds the groups' collectives
  (the running statistics' mean over the devices), and both launchers give the same run."""
  rows = {}
  for parallel in ("pmap", "shard_map"):
    config = _config(tmp_path / parallel, "fashion_mnist", data_dir=str(data_dir),
                     num_devices=2, parallel=parallel, gns_groups=4, gns_every=2, epochs=1,
                     train_examples=96)
    loop.train(config)
    rows[parallel] = _steps(config.workdir)
  ratio = {k: [r.noise_to_signal for r in v] for k, v in rows.items()}
  assert ratio["pmap"] == ratio["shard_map"] and len(ratio["pmap"]) == 6
  np.testing.assert_allclose([r.loss for r in rows["pmap"]], [r.loss for r in rows["shard_map"]],
                             rtol=1e-6)
  # Grouped at steps 0, 2, 4: rows 1, 3, 5 move the estimate, rows 2, 4, 6 hold it.
  r = ratio["pmap"]
  assert r[1] == r[0] and r[3] == r[2] and r[5] == r[4]
  assert len(set(r[::2])) == 3 and all(math.isfinite(x) for x in r)


@pytest.mark.slow
def test_a_step_between_the_kth_is_the_plain_step_with_one_group():
  """`group_every` 2 on ResNet tiny (BatchNorm): step 0 is the grouped step, step 1 the plain
  step's gradient, BatchNorm statistics and metrics, handed to the update as one group."""
  rng = np.random.default_rng(1)
  batch = {"image": rng.standard_normal((16, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  (grouped, g_metrics), (plain_next, p_metrics) = _resnet_step(2, jax.devices()[:1], batch,
                                                              group_every=2, steps=2)
  want, want_metrics = _resnet_step(2, jax.devices()[:1], batch)
  assert int(grouped.opt_state["n"]) == 2 and int(plain_next.opt_state["n"]) == 1
  jax.tree.map(close, grouped.opt_state["grads"], want.opt_state["grads"])
  close(grouped.opt_state["q"], want.opt_state["q"])
  close(g_metrics["loss"], want_metrics["loss"])
  plain, plain_metrics = _resnet_step(None, jax.devices()[:1], batch)
  # The capture optimizer moves nothing, so step 1 sees step 0's params, and its own stats.
  jax.tree.map(close, plain_next.opt_state["grads"], plain.opt_state["grads"])
  close(plain_next.opt_state["q"], float(plain_metrics["grad_norm"]) ** 2)
  close(p_metrics["loss"], plain_metrics["loss"])
  # Not vacuous: the grouped and the plain step's gradients differ (BatchNorm over 8 examples
  # against 16: by 0.7% in norm, against a threshold of 0.1%, 5x the tolerance above).
  assert not np.allclose(float(g_metrics["grad_norm"]), float(p_metrics["grad_norm"]), rtol=1e-3)


def test_step_rows_leave_out_a_nan_noise_to_signal_and_keep_a_value(tmp_path):
  """Strategies without gns report NaN; their rows are then the rows written before."""
  metrics = {"loss": np.float32(0.7), "accuracy": np.float32(0.5),
             "grad_norm": np.float32(1.5), "lr_scale": np.float32(np.nan),
             "variability": np.float32(np.nan), "effective_lr": np.float32(1e-3)}
  recorder = records.Recorder(tmp_path)
  recorder.steps([
      records.StepRow.from_metrics(1, 1, {**metrics, "noise_to_signal": np.float32(np.nan)}),
      records.StepRow.from_metrics(2, 1, {**metrics, "lr_scale": np.float32(0.9),
                                          "noise_to_signal": np.float32(0.25)}),
  ])
  recorder.close()
  lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
  assert set(lines[0]) == STEP_FIELDS
  assert lines[1]["readouts"] == {"lr_scale": 0.8999999761581421, "noise_to_signal": 0.25}
  read = records.read_steps(tmp_path / "steps.jsonl")
  assert read[0].noise_to_signal is None and read[1].noise_to_signal == 0.25

"""The training procedure end to end: tasks, strategies, launchers, records and config errors."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing import event_file_loader

import gradvar_optax

from train import __main__ as cli
from train import config as config_lib
from train import loop
from train import strategies

EPOCH_FIELDS = {
    "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "effective_lr",
    "effective_lr_mean", "lr_scale", "lr_scale_mean", "variability_mean", "train_time_s",
    "train_time_total_s", "elapsed_s", "cpu_time_s", "examples_per_s", "peak_rss_mb",
    "device_memory_mb"}
STEP_FIELDS = {"step", "epoch", "loss", "accuracy", "grad_norm", "lr_scale", "variability",
               "effective_lr"}


def _config(tmp_path, task, **kw):
  base = dict(task=task, workdir=str(tmp_path / "run"), strategy="gradvar", model_size="tiny",
              epochs=2, batch_size=8, num_devices=2, train_examples=48, eval_examples=20,
              log_every=1, quiet=True, cache_dir=str(tmp_path / "cache"))
  base.update(kw)
  return config_lib.Config(**base)


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _final_params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(pathlib.Path(workdir, "final").absolute())


def _check_records(workdir, epochs, lr):
  workdir = pathlib.Path(workdir)
  rows = _jsonl(workdir / "epochs.jsonl")
  assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
  for r in rows:
    assert set(r) == EPOCH_FIELDS
    assert math.isfinite(r["val_loss"]) and 0.0 <= r["val_accuracy"] <= 1.0
    assert r["train_time_s"] > 0 and r["examples_per_s"] > 0 and r["peak_rss_mb"] > 0
  steps = _jsonl(workdir / "steps.jsonl")
  assert [s["step"] for s in steps] == list(range(1, rows[-1]["step"] + 1))
  for s in steps:
    assert set(s) == STEP_FIELDS
    # gradvar's effective LR is the base LR times the recorded scale, at every step.
    np.testing.assert_allclose(s["effective_lr"], lr * s["lr_scale"], rtol=1e-6)
  run = json.loads((workdir / "run.json").read_text())
  assert run["end"] is not None and run["git"]["commit"]
  assert run["hardware"]["device_count"] == 2 and run["versions"]["jax"] == jax.__version__
  assert set(run["test"]) == {"test_loss", "test_accuracy", "test_examples"}
  assert json.loads((workdir / "config.json").read_text())["strategy"] == "gradvar"
  # TensorBoard event files hold the same scalars.
  events = list(workdir.joinpath("tb").glob("events.out.tfevents.*"))
  assert events
  tags = {v.tag for e in event_file_loader.EventFileLoader(str(events[0])).Load()
          for v in e.summary.value}
  assert {"epoch/val_loss", "epoch/lr_scale", "step/effective_lr", "step/loss"} <= tags
  return rows


@pytest.mark.slow
@pytest.mark.parametrize("task", ["rt_sentiment", "wordnet_topics", "fashion_mnist"])
def test_stand_in_task_trains_end_to_end(task, tmp_path, data_dir):
  config = _config(tmp_path, task, data_dir=str(data_dir))
  result = loop.train(config)
  rows = _check_records(config.workdir, 2, config.lr)
  assert result["val_loss"] == rows[-1]["val_loss"]
  assert jax.tree.leaves(_final_params(config.workdir))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["imdb", "ag_news", "cifar10"])
def test_seed_task_trains_end_to_end_on_mock_data(task, tmp_path):
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    config = _config(tmp_path, task, epochs=1)
    loop.train(config)
  _check_records(config.workdir, 1, config.lr)


@pytest.mark.parametrize("name", strategies.names())
def test_every_strategy_builds_and_steps(name):
  lr, steps_per_epoch, epochs = 1e-2, 5, 3
  strategy = strategies.build(name, lr, steps_per_epoch, epochs)
  # Named like a LayerNorm's params: "scale" and "bias" also appear in the optimizer's moments, so
  # a strategy must not find its own state by those names.
  params = {"w": jnp.ones(4), "norm": {"scale": jnp.ones(()), "bias": jnp.zeros(())}}
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((steps_per_epoch * epochs, 16, 4)).astype(np.float32)
  ys = xs @ np.arange(4, dtype=np.float32)

  def predict(p, x):
    return (x @ p["w"]) * p["norm"]["scale"] + p["norm"]["bias"]

  @jax.jit
  def step(params, opt_state, x, y, t):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((predict(p, x) - y) ** 2))(params)
    updates, opt_state = strategy.optimizer.update(grads, opt_state, params, value=loss)
    return optax.apply_updates(params, updates), opt_state, loss, strategy.effective_lr(opt_state, t)

  opt_state = strategy.optimizer.init(params)
  losses, lrs = [], []
  for t, (x, y) in enumerate(zip(xs, ys)):
    params, opt_state, loss, lr_t = step(params, opt_state, x, y, t)
    losses.append(float(loss))
    lrs.append(float(lr_t))
  assert all(math.isfinite(v) for v in losses + lrs)
  assert losses[-1] < losses[0]
  assert min(lrs) >= 0 and max(lrs) > 0
  if name in ("fixed", "gradvar-before-adam"):
    assert set(lrs) == {np.float32(lr)}
  if name == "cosine":
    assert lrs[0] < lrs[steps_per_epoch] and lrs[-1] < lrs[steps_per_epoch]
  if name == "step":
    np.testing.assert_allclose([lrs[0], lrs[-1]], [lr, lr * 0.01], rtol=1e-6)


def test_unknown_strategy_lists_the_known_ones():
  with pytest.raises(ValueError, match="known strategies: .*gradvar"):
    strategies.build("adagrad-ish", 1e-3, 10, 2)


@pytest.mark.parametrize("args, field", [
    (["--lr=-1e-3"], "lr"),
    (["--epochs", "0"], "epochs"),
    (["--strategy", "nope"], "strategy"),
    (["--task", "nope"], "task"),
    (["--set", "model_size=huge"], "model_size"),
    (["--set", "batch_size=lots"], "batch_size"),
    (["--set", "no_such_field=1"], "no_such_field"),
])
def test_bad_config_fails_naming_the_field(args, field, tmp_path, capsys):
  argv = ["--task", "rt_sentiment", "--workdir", str(tmp_path / "w")] + args
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert field in err
  assert not (tmp_path / "w").exists()  # failed before anything ran


def test_batch_not_divisible_by_devices_fails_before_compile(tmp_path, capsys):
  argv = ["--task", "rt_sentiment", "--workdir", str(tmp_path / "w"), "--batch-size", "12",
          "--num-devices", "8"]
  assert cli.main(argv) == 2
  assert "batch_size" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_help_lists_tasks_and_strategies(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  out = capsys.readouterr().out
  for word in ("rt_sentiment", "cifar10", "gradvar-cosine", "prodigy", "--parallel", "--set"):
    assert word in out


@pytest.mark.slow
def test_pmap_and_shard_map_are_bitwise_equal_and_match_one_device(tmp_path, data_dir):
  # One cache: the WordPiece vocabulary learnt from the data is then the same for both runs.
  common = dict(data_dir=str(data_dir), epochs=1, batch_size=16, train_examples=96,
                eval_examples=16, cache_dir=str(tmp_path / "cache"))
  # BERT: dropout differs per replica by the device index, under both launchers alike.
  runs = {}
  for parallel in ("pmap", "shard_map"):
    config = _config(tmp_path / parallel, "wordnet_topics", parallel=parallel, num_devices=8,
                     **common)
    loop.train(config)
    runs[parallel] = _final_params(config.workdir)
  jax.tree.map(np.testing.assert_array_equal, runs["pmap"], runs["shard_map"])
  # ResNet (BatchNorm synced over the replicas): 8 devices agree with 1 on the same global batch.
  finals = {}
  for n in (8, 1):
    config = _config(tmp_path / f"resnet{n}", "fashion_mnist", num_devices=n, **common)
    loop.train(config)
    finals[n] = _final_params(config.workdir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               finals[8], finals[1])


@pytest.mark.parametrize("name, field, value", [("gradvar-window20", "norms", 20),
                                                ("gradvar-factor0.05", "factor", 0.05)])
def test_ablation_variants_change_only_their_knob(name, field, value):
  params = {"w": jnp.ones(3)}
  state = strategies.build(name, 1e-3, 4, 2).optimizer.init(params)
  gv = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, gradvar_optax.GradVarState))
  gv = [x for x in gv if isinstance(x, gradvar_optax.GradVarState)]
  assert len(gv) == 1
  if field == "norms":
    assert gv[0].norms.shape == (value,)
  else:
    # The factor is not state: a rising variability must scale by exactly 1 - factor.
    opt = strategies.build(name, 1e-3, 4, 2).optimizer
    s = opt.init(params)
    # Decisions come every 5 steps: a constant window (v = 0), then one ending in a jump (v > 0).
    for n in [1.0] * 9 + [5.0]:
      _, s = opt.update({"w": jnp.full(3, n)}, s, params)
    assert float(gradvar_optax.lr_scale(s)) == pytest.approx(1 - value)

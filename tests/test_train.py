"""The training procedure end to end: tasks, launchers, records and config errors.

What each strategy does, step by step, is tested in tests/test_strategies.py.
"""

import json
import math
import pathlib

from gradvar_reference import Reference
import isolate
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.backend.event_processing import event_file_loader
import tensorflow_datasets as tfds

from train import __main__ as cli
from train import config as config_lib
from train import loop

EPOCH_FIELDS = {
    "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "effective_lr",
    "effective_lr_mean", "train_time_s", "train_time_total_s", "elapsed_s", "cpu_time_s",
    "examples_per_s", "peak_rss_mb", "device_memory_mb", "readout_means"}
STEP_FIELDS = {"step", "epoch", "loss", "accuracy", "grad_norm", "readouts", "effective_lr"}
# gradvar's readouts (`train.strategies`), in every step row and as means in every epoch row.
READOUTS = {"lr_scale", "variability"}


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


def _checkpointed_train_state(workdir, step):
  """The training state saved in checkpoint `step`, read without a target (plain containers)."""
  with ocp.CheckpointManager(pathlib.Path(workdir, "checkpoints").absolute()) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]["train"]


def _check_final(workdir, steps_per_epoch):
  """`final` holds the trained model: the last checkpoint's params and BatchNorm statistics."""
  final = _final_params(workdir)
  last = _checkpointed_train_state(workdir, 2 * steps_per_epoch)
  assert set(final) == {"params", "batch_stats"} and jax.tree.leaves(final["params"])
  jax.tree.map(np.testing.assert_array_equal, final["params"], last["params"])
  jax.tree.map(np.testing.assert_array_equal, final["batch_stats"], last["batch_stats"])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final))
  # Epoch 2 trained: every weight matrix moved since the end of epoch 1.
  first = _checkpointed_train_state(workdir, steps_per_epoch)["params"]
  moved = jax.tree.map(lambda a, b: a.ndim < 2 or not np.array_equal(a, b), final["params"], first)
  assert all(jax.tree.leaves(moved))


def _check_records(workdir, epochs, lr):
  workdir = pathlib.Path(workdir)
  rows = _jsonl(workdir / "epochs.jsonl")
  assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
  for r in rows:
    assert set(r) == EPOCH_FIELDS and set(r["readout_means"]) == READOUTS
    assert math.isfinite(r["val_loss"]) and 0.0 <= r["val_accuracy"] <= 1.0
    assert r["train_time_s"] > 0 and r["examples_per_s"] > 0 and r["peak_rss_mb"] > 0
  steps = _jsonl(workdir / "steps.jsonl")
  assert [s["step"] for s in steps] == list(range(1, rows[-1]["step"] + 1))
  reference = Reference()  # gradvar's defaults
  for s in steps:
    assert set(s) == STEP_FIELDS and set(s["readouts"]) == READOUTS
    # gradvar's scale follows the NumPy reference of its rule on the recorded gradient norms,
    # and its effective LR is the base LR times that scale, at every step.
    scale = s["readouts"]["lr_scale"]
    np.testing.assert_allclose(scale, reference.step([s["grad_norm"]]), rtol=1e-6)
    np.testing.assert_allclose(s["effective_lr"], lr * scale, rtol=1e-6)
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
  assert {"epoch/val_loss", "epoch/lr_scale_mean", "step/lr_scale", "step/effective_lr",
          "step/loss"} <= tags
  return rows


@pytest.mark.slow
@pytest.mark.parametrize("task", ["rt_sentiment", "wordnet_topics", "fashion_mnist"])
def test_stand_in_task_trains_end_to_end(task, tmp_path, data_dir):
  config = _config(tmp_path, task, data_dir=str(data_dir))
  result = loop.train(config)
  rows = _check_records(config.workdir, 2, config.lr)
  assert result["val_loss"] == rows[-1]["val_loss"]
  _check_final(config.workdir, rows[0]["step"])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["imdb", "ag_news", "cifar10"])
def test_seed_task_trains_end_to_end_on_mock_data(task, tmp_path):
  with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
    config = _config(tmp_path, task, epochs=1)
    loop.train(config)
  _check_records(config.workdir, 1, config.lr)


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
def test_pmap_and_shard_map_are_bitwise_equal_and_match_one_device(request, tmp_path):
  # 8 devices sharing 2 cores, and ResNet's synced BatchNorm: the multi-host tests' XLA flags.
  if isolate.rerun(request, devices=8):
    return
  data_dir = request.getfixturevalue("data_dir")
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

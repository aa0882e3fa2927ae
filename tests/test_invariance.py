"""The seams refactor changed no trajectory: a tiny run with the pre-refactor commit and this tree.

`benchmarks.invariance` exports the older commit with `git archive`, runs the same command line in
both trees and compares every deterministic record field bitwise.
"""

import json

import pytest

from benchmarks import invariance


def _write_run(folder, loss, accuracy=0.5):
  folder.mkdir(parents=True)
  (folder / "steps.jsonl").write_text(json.dumps({"step": 1, "loss": loss}) + "\n")
  (folder / "epochs.jsonl").write_text(
      json.dumps({"epoch": 1, "val_loss": loss, "train_time_s": loss * 7}) + "\n")
  (folder / "run.json").write_text(json.dumps({"test": {"test_accuracy": accuracy}}))


def test_differences_finds_a_changed_bit_and_ignores_the_clock(tmp_path):
  _write_run(tmp_path / "a", 0.25)
  _write_run(tmp_path / "b", 0.25)
  assert invariance.differences(tmp_path / "a", tmp_path / "b") == []
  _write_run(tmp_path / "c", 0.25 + 2**-40, accuracy=0.5)
  found = invariance.differences(tmp_path / "a", tmp_path / "c")
  # The loss differs in steps and epochs; train_time_s differs too but is the machine's.
  assert len(found) == 2 and all("loss" in line for line in found), found


@pytest.mark.slow
def test_tiny_run_is_bitwise_equal_to_the_pre_refactor_commit(capsys):
  assert invariance.main(["--quick"]) == 0, capsys.readouterr().out
  assert "bitwise equal" in capsys.readouterr().out

"""`stationarity` and `replay-stationarity` through `python -m benchmarks compare`.

A tiny suite (rt_sentiment at the tiny preset, 48 examples, 2 epochs of 3 steps, 2 seeds, every
step logged) runs the rule and its replay control with the real `python -m train` children: the
replay follows the other seed's run, step by step, and the rule's step rows carry its readouts.
"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE = """\
name = "stationarity-tiny"
seeds = [0, 1]
strategies = ["stationarity", "replay-stationarity"]
baseline = "stationarity"
epochs = 2
lr = 1e-3
[defaults]
model_size = "tiny"
batch_size = 16
num_devices = 1
log_every = 1
[tasks.rt_sentiment]
train_examples = 48
eval_examples = 32
"""


def _steps(folder):
  return [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compare_runs_stationarity_and_its_replay(tmp_path, data_dir):
  suite = tmp_path / "stationarity-tiny.toml"
  suite.write_text(SUITE)
  out = tmp_path / "out"
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks", "compare", "--suite", str(suite), "--out", str(out),
       "--data-dir", str(data_dir), "--no-progress"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "4 runs trained, 0 already finished, 0 failed" in done.stderr
  runs = out / "runs/rt_sentiment"
  for seed, source_seed in ((0, 1), (1, 0)):
    rule = _steps(runs / f"stationarity/lr0.001/seed{source_seed}")
    assert len(rule) == 6
    for row in rule:
      assert set(row["readouts"]) == {"lr_scale", "drops", "test_step", "test_mean",
                                      "test_lower", "test_upper"}
      # No test is due in 6 steps (the first needs 200): the scale is 1.
      assert row["readouts"]["lr_scale"] == 1.0 and row["readouts"]["drops"] == 0.0
    replay = runs / f"replay-stationarity/lr0.001/seed{seed}"
    control = json.loads((replay / "control.json").read_text())
    assert control["control"] == "replay-stationarity" and control["of"] == "stationarity"
    assert control["source_seed"] == source_seed
    assert pathlib.Path(control["replay_from"]).name == f"seed{source_seed}"
    assert ([r["effective_lr"] for r in _steps(replay)]
            == [r["effective_lr"] for r in rule])
  assert "replay-stationarity" in (out / "REPORT.md").read_text()

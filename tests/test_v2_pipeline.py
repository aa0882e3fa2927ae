"""The v2 comparison end to end on `benchmarks/suites/tiny-v2.toml`, through the CLI.

tune -> calibrate (targets from the tuned reference strategy) -> regime -> compare --tune -> report,
into a temporary folder, with the real `python -m train` runs (2 tasks x 2 seeds at the tiny
preset, 21 runs; fashion_mnist runs only its primary's two arms). The suite file is copied first,
since calibrate writes its thresholds into it.
"""

import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys

import pytest

from benchmarks import suite as suite_lib
from benchmarks import tuning
from train import records

REPO = pathlib.Path(__file__).resolve().parents[1]


# 21 runs of a few steps each: compiling is most of their time, and XLA's backend
# optimisations (which change no result this test checks) are most of that.
# The runs use one device, so the 8 simulated ones of the tests' XLA_FLAGS are left out too.
ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def _cli(*args, data_dir):
  cmd = [sys.executable, "-m", "benchmarks", *args, "--data-dir", str(data_dir), "--no-progress"]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500, env=ENV)
  assert done.returncode == 0, " ".join(cmd) + "\n" + done.stdout + done.stderr[-4000:]
  return done


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


@pytest.mark.slow
def test_tiny_v2_runs_end_to_end(tmp_path, data_dir):
  path = tmp_path / "tiny-v2.toml"
  shutil.copy(REPO / "benchmarks/suites/tiny-v2.toml", path)
  out = tmp_path / "out"
  where = ["--suite", str(path), "--out", str(out)]

  # The declared primaries need targets: compare refuses before the tuning and calibration.
  refused = subprocess.run([sys.executable, "-m", "benchmarks", "compare", *where, "--tune",
                            "--no-progress", "--data-dir", str(data_dir)], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
  assert refused.returncode == 2 and "benchmarks calibrate" in refused.stderr
  assert not (out / "runs").exists()

  _cli("tune", *where, data_dir=data_dir)
  suite = suite_lib.load(str(path))
  picks = tuning.selection(suite, out)
  assert set(picks) == {"rt_sentiment"}  # the suite's tune_tasks
  for task, by in picks.items():
    assert set(by) == {"gradvar", "schedule-free"}  # controls: not tuned
    for strategy, p in by.items():
      assert p["complete"], (task, strategy, p)
      initial = list(suite.strategy_grid(task, strategy))
      assert p["grid"][:2] == initial and len(p["grid"]) == 2 + p["extensions"]
      # With 2 points every pick is on an edge, so each strategy takes its one extension.
      assert p["extensions"] == 1 and p["lr"] in p["grid"]

  _cli("calibrate", *where, data_dir=data_dir)
  suite = suite_lib.load(str(path))
  base_lr = {task: picks[task]["gradvar"]["lr"] if task in picks else suite.task_lr(task)
             for task in suite.tasks}
  for task in suite.tasks:
    reference = suite.calibration_strategy  # tuned, where the task is
    want = picks[task][reference]["lr"] if task in picks else suite.task_lr(task)
    assert suite.calibration.raw["lr"][task] == want
    assert suite.calibration.thresholds[task] > 0

  _cli("regime", *where, data_dir=data_dir)
  _cli("compare", *where, "--tune", data_dir=data_dir)

  seeds = list(suite.seeds)
  trained = {p.relative_to(out).parts[1:3] + (p.relative_to(out).parts[4],)
             for p in (out / "runs").glob("*/*/*/seed*") if (p / "run.json").exists()}
  # Exactly the arms: fashion_mnist has no controls, rt_sentiment's matched run one seed.
  assert trained == {(t, s, f"seed{seed}") for t in suite.tasks
                     for s in suite.task_strategies(t) for seed in suite.seeds_of(t, s)}
  assert len(trained) == 13
  for task in suite.tasks:
    lr = base_lr[task]
    for seed in seeds:
      source = out / suite.run(task, "gradvar", seed, lr=lr).relpath()
      assert (source / "evals.jsonl").exists()  # eval_every_steps
      if seed in suite.seeds_of(task, "matched-gradvar"):
        mean = statistics.fmean(r.effective_lr_mean for r in
                                records.read_epochs(source / "epochs.jsonl"))
        matched = out / suite.run(task, "matched-gradvar", seed, lr=mean).relpath()
        assert _json(matched / "control.json") == {
            "control": "matched-gradvar", "of": "gradvar", "lr": mean, "base_lr": lr,
            "source": str(source.relative_to(out))}
        assert _json(matched / "config.json")["lr"] == mean
        assert _json(matched / "run.json").get("end"), matched
      if seed in suite.seeds_of(task, "replay-gradvar"):
        replay = out / suite.run(task, "replay-gradvar", seed, lr=lr).relpath()
        other = seeds[(seeds.index(seed) + 1) % len(seeds)]
        replay_from = _json(replay / "config.json")["replay_from"]
        assert (REPO / replay_from).resolve() == (
            out / suite.run(task, "gradvar", other, lr=lr).relpath()).resolve()
        assert _json(replay / "run.json").get("end"), replay
      if seed in suite.seeds_of(task, "gradvar-null"):
        null = out / suite.run(task, "gradvar-null", seed, lr=lr).relpath()
        assert _json(null / "run.json").get("end"), null

  results = _json(out / "results.json")
  for task, by in picks.items():
    for strategy, p in by.items():
      recorded = results["tuning"][task][strategy]
      assert (recorded["lr"], recorded["extensions"]) == (p["lr"], p["extensions"])
  primaries = results["primaries"]
  assert [(p["task"], p["a"], p["b"]) for p in primaries] == [
      (p.task, p.a, p.b) for p in suite.analysis.primaries]
  for p in primaries:  # every seed paired; Holm never lowers a p-value
    assert p["seeds"] == seeds and p["p_holm"] >= p["p_value"]
  assert set(results["regime"]["tasks"]) == set(suite.tasks)
  report = (out / "REPORT.md").read_text()
  assert "Primaries (pre-registered)" in report and "Regime check" in report
  for primary in suite.analysis.primaries:
    assert primary.b in report

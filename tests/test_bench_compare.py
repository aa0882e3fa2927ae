"""Suite files and the comparison runner: errors that name the field, and real tiny compares.

The end-to-end tests run `python -m benchmarks compare` (as a subprocess, or its `main` in this
process where the test stops it with a signal at a chosen point) on the `tiny` suite
(rt_sentiment at the tiny preset, 48 examples, 2 epochs) with the real `python -m train`
subprocesses.
"""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from benchmarks import __main__ as benchmarks_main
from benchmarks import compare
from benchmarks import runner
from benchmarks import suite as suite_lib
from train import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = """\
name = "t"
seeds = [0, 1]
strategies = ["fixed", "gradvar"]
epochs = 2
[defaults]
model_size = "tiny"
[tasks.rt_sentiment]
train_examples = 48
"""


@pytest.mark.parametrize("change, field", [
    ('colour = "red"\n', "colour: unknown key"),
    ('baseline = "step"\n', "baseline: 'step' must be one of"),
    ("epochs = 0\n", None),  # replaces the line below
    ("tune_seeds = [1]\n", "tune_seeds: [1] are also evaluation seeds"),
    ("[calibration]\nreference_seeds = [0]\n", "calibration.reference_seeds: [0]"),
    ("[calibration.thresholds]\nrt_sentiment = -1\n", "calibration.thresholds.rt_sentiment"),
    ("[tasks.rt_sentiment.model]\ndepth = 2\n[tasks.nope]\n", "tasks.nope: unknown task"),
])
def test_suite_errors_name_the_field(change, field):
  if field is None:
    text, field = BASE.replace("epochs = 2", "epochs = 0"), "epochs: must be a positive"
  elif change.startswith("["):
    text = BASE + change
  else:
    text = change + BASE
  with pytest.raises(ValueError) as info:
    suite_lib.parse(text, pathlib.Path("x.toml"))
  assert field in str(info.value) and "x.toml" in str(info.value)


@pytest.mark.parametrize("where, key, message", [
    ("[defaults]", "batchsize = 8", "defaults.batchsize: unknown config field"),
    ("[defaults]", "seed = 3", "defaults.seed: is set by the runner"),
    ("[tasks.rt_sentiment]", "workdir = 'x'", "tasks.rt_sentiment.workdir: is set by the runner"),
    ("[tasks.rt_sentiment]", "batch_size = 0", "tasks.rt_sentiment: resolves to a bad run config"),
    ("[defaults]", "batch_size = 'eight'",
     "tasks.rt_sentiment: resolves to a bad run config: config.batch_size: expected int"),
])
def test_suite_run_settings_are_checked(where, key, message):
  text = BASE.replace(where, f"{where}\n{key}")
  with pytest.raises(ValueError) as info:
    suite_lib.parse(text)
  assert message in str(info.value)


def test_suite_resolves_runs_and_narrows():
  text = BASE.replace("[tasks.rt_sentiment]", "[tasks.rt_sentiment]\nepochs = 3\nlr = 2e-3\n"
                      "data = { max_len = 16 }\nmodel.hidden_size = 4")
  s = suite_lib.parse(text)
  run = s.run("rt_sentiment", "gradvar", 1)
  assert (run.epochs, run.lr, run.seed) == (3, 2e-3, 1)
  assert run.relpath() == pathlib.Path("runs/rt_sentiment/gradvar/lr0.002/seed1")
  config = run.config("w")
  assert config.data == {"max_len": 16} and config.model == {"hidden_size": 4}
  assert (config.model_size, config.train_examples, config.epochs) == ("tiny", 48, 3)
  assert [(r.strategy, r.seed) for r in s.grid()] == [
      ("fixed", 0), ("gradvar", 0), ("fixed", 1), ("gradvar", 1)]  # seed-major
  assert s.narrow(strategies=["gradvar"], seeds=1).grid() == [s.run("rt_sentiment",
                                                                    "gradvar", 0)]
  assert s.narrow(only_seeds=[1]).grid() == [s.run("rt_sentiment", "fixed", 1),
                                             s.run("rt_sentiment", "gradvar", 1)]
  with pytest.raises(ValueError, match="--seeds: must be between 1 and 2"):
    s.narrow(seeds=3)
  with pytest.raises(ValueError, match="--only-seeds: 7 not in the suite"):
    s.narrow(only_seeds=[1, 7])
  with pytest.raises(ValueError, match="one or the other"):
    s.narrow(seeds=1, only_seeds=[1])
  with pytest.raises(ValueError, match="--tasks: imdb not in the suite"):
    s.narrow(tasks=["imdb"])
  # The runner's complete config: the suite's, plus the fields that the runner owns.
  assert runner.run_config(run, pathlib.Path("W"), pathlib.Path("/o"), "/d") == (
      dataclasses.replace(config, workdir="W", cache_dir="/o/.cache", data_dir="/d", quiet=True))
  assert runner.command(pathlib.Path("W/run_config.json"), "allow-fresh")[1:] == [
      "-m", "train", "--config", "W/run_config.json", "--resume=allow-fresh"]


def test_every_committed_suite_loads():
  from train import strategies
  for path in sorted(suite_lib.SUITES_DIR.glob("*.toml")):
    if path.stem == "cpu-v3" and "stationarity" not in strategies.names():
      continue  # its arms come from the stationarity branch (tests/test_cpu_v3.py stands them in)
    s = suite_lib.load(str(path))
    assert s.grid(), path


def test_with_calibration_keeps_the_rest_of_the_file():
  text = "# top comment\n" + BASE + "[calibration]\nrule = 'old'\n[calibration.thresholds]\n" \
         "rt_sentiment = 9.0\n"
  new = suite_lib.with_calibration(text, {"rule": "new", "thresholds": {"rt_sentiment": 0.5}})
  assert new.startswith("# top comment\n" + BASE)
  assert "rule = 'old'" not in new
  parsed = suite_lib.parse(new)
  assert parsed.calibration.thresholds == {"rt_sentiment": 0.5}
  # An inline table cannot be edited as text: the file is rewritten whole, still correct.
  inline = BASE.replace('name = "t"', 'name = "t"\ncalibration = { rule = "x" }')
  assert suite_lib.parse(suite_lib.with_calibration(inline, {"rule": "y"})).calibration.raw == {
      "rule": "y"}


def test_a_run_made_with_other_settings_is_not_reused(tmp_path):
  s = suite_lib.parse(BASE)
  run = s.run("rt_sentiment", "fixed", 0)
  workdir = tmp_path / run.relpath()
  workdir.mkdir(parents=True)
  stored = run.config(str(workdir)).to_json()
  (workdir / "config.json").write_text(json.dumps({**stored, "quiet": True, "cache_dir": "x"}))
  runner.check_config(run, workdir)  # runner-owned fields may differ
  (workdir / "config.json").write_text(json.dumps({**stored, "epochs": 5}))
  with pytest.raises(ValueError, match="made with epochs=5, the suite now asks for epochs=2"):
    runner.check_config(run, workdir)


def _compare(out, data_dir, *extra):
  return [sys.executable, "-m", "benchmarks", "compare", "--suite", "tiny", "--seeds", "1",
          "--out", str(out), "--data-dir", str(data_dir), "--no-progress", *extra]


def _json(path):
  return json.loads(pathlib.Path(path).read_text())


def test_a_stop_just_before_the_child_starts_is_an_interrupted_attempt(tmp_path, monkeypatch):
  """SIGTERM in the moment between the run folder's creation and the child's start."""
  run = suite_lib.parse(BASE).run("rt_sentiment", "fixed", 0)
  workdir = tmp_path / run.relpath()
  handler = signal.getsignal(signal.SIGTERM)
  # `environment` is called for the child's start: the signal comes right before it.
  monkeypatch.setattr(runner, "environment", lambda out: signal.raise_signal(signal.SIGTERM))
  for attempt in range(2):
    with pytest.raises(runner.Interrupted, match="signal 15"):
      runner.run_all([run], tmp_path, None, progress=False)
    attempts = _json(workdir / "bench.json")["attempts"]
    assert len(attempts) == attempt + 1
    assert attempts[-1]["interrupted"] and attempts[-1]["rc"] is None
  assert [a["resume"] for a in attempts] == [None, "allow-fresh"]
  assert attempts[0]["command"] == ["-m", "train", "--config", str(workdir / "run_config.json")]
  assert signal.getsignal(signal.SIGTERM) == handler  # the runner's own handler is gone
  # The run's complete config is in its folder.
  written = json.loads((workdir / "run_config.json").read_text())
  assert config_lib.Config(**written) == runner.run_config(run, workdir, tmp_path, None)


@pytest.mark.slow
def test_compare_end_to_end_survives_an_interruption(tmp_path, data_dir, monkeypatch, capsys):
  """2 strategies x 1 task x 1 seed x 2 epochs; SIGTERM during the second run, then resume."""
  out = tmp_path / "out"
  first = out / "runs/rt_sentiment/fixed/lr0.001/seed0"
  second = out / "runs/rt_sentiment/gradvar/lr0.001/seed0"
  # The runner (here in this process) waits for each child with os.wait4: as it starts waiting
  # for the second, it gets a SIGTERM, so the second child has started and cannot have finished.
  waits = []

  def wait4(pid, options):
    waits.append(pid)
    if len(waits) == 2:
      signal.raise_signal(signal.SIGTERM)
    return real_wait4(pid, options)

  real_wait4 = os.wait4
  monkeypatch.setattr(runner.os, "wait4", wait4)
  assert benchmarks_main.main(_compare(out, data_dir)[3:]) == 130
  monkeypatch.undo()
  assert "rerun the same command to continue" in capsys.readouterr().err
  assert runner.status(first) == "finished" and runner.status(second) != "finished"
  first_start = _json(first / "run.json")["start"]
  # Each child was started from its folder's complete config, and ran with exactly that one.
  assert _json(first / "bench.json")["attempts"][0]["command"] == [
      "-m", "train", "--config", str(first / "run_config.json")]
  assert _json(first / "run_config.json") == _json(first / "config.json")

  done = subprocess.run(_compare(out, data_dir), cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "1 runs trained, 1 already finished, 0 failed" in done.stderr
  assert _json(first / "run.json")["start"] == first_start  # not repeated
  assert len(_json(first / "bench.json")["attempts"]) == 1
  attempts = _json(second / "bench.json")["attempts"]
  assert [a.get("interrupted", False) for a in attempts] == [True, False]
  assert attempts[1]["rc"] == 0 and attempts[1]["resume"] == "allow-fresh"
  assert attempts[1]["cpu_s"] > 0 and attempts[1]["max_rss_mb"] > 100

  results = _json(out / "results.json")
  groups = results["tasks"]["rt_sentiment"]["settings"]["untuned"]["strategies"]
  for name in ("fixed", "gradvar"):
    assert groups[name]["seeds"] == [0]
    assert groups[name]["per_seed"]["0"]["epochs_run"] == 2
    assert 0 <= groups[name]["per_seed"]["0"]["final_val_accuracy"] <= 1
  assert "| fixed | 0.001 | 1 |" in done.stdout  # the printed summary table
  for name in ("REPORT.md", "suite.toml", ".gitignore", "commands.json",
               "plots/val_loss_rt_sentiment.png", "plots/summary_rt_sentiment.png"):
    assert (out / name).exists(), name
  # Every run of the folder shares one data cache and one compilation cache.
  assert (out / ".cache").is_dir() and any((out / ".jax_cache").iterdir())
  assert len(_json(out / "commands.json")) == 2

  # A third time nothing trains at all.
  monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("a finished run reran"))
  s = suite_lib.load("tiny").narrow(seeds=1)
  assert compare.compare(s, out, ["compare"], data_dir=str(data_dir), progress=False) == 0


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path, data_dir):
  """One run fails inside `train` (an unknown model option); compare says so and exits 1."""
  suite_path = tmp_path / "bad.toml"
  suite_path.write_text((REPO / "benchmarks/suites/tiny.toml").read_text().replace(
      "[tasks.rt_sentiment]", "[tasks.rt_sentiment]\nmodel.no_such_option = 1"))
  out = tmp_path / "out"
  cmd = _compare(out, data_dir, "--strategies", "fixed", "--no-report")
  cmd[cmd.index("tiny")] = str(suite_path)
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 1, done.stdout + done.stderr
  assert "0 runs trained, 0 already finished, 1 failed" in done.stderr
  workdir = out / "runs/rt_sentiment/fixed/lr0.001/seed0"
  assert _json(workdir / "bench.json")["attempts"][0]["rc"] != 0
  assert "no_such_option" in (workdir / "train.log").read_text()
  assert runner.status(workdir) != "finished"


def _append_commands(out, tag, n):
  suite = suite_lib.load("tiny")
  for i in range(n):
    runner.prepare_out(suite, pathlib.Path(out), [tag, str(i)])


def test_lanes_appending_to_commands_json_at_once_lose_no_entry(tmp_path):
  # Two lanes on one folder used to read-append-write commands.json at the same moment, and one
  # entry was lost; now every append of every process is kept.
  import multiprocessing
  ctx = multiprocessing.get_context("fork")
  procs = [ctx.Process(target=_append_commands, args=(str(tmp_path), f"lane{k}", 25))
           for k in range(4)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(60)
    assert p.exitcode == 0
  history = json.loads((tmp_path / "commands.json").read_text())
  got = sorted(h["command"] for h in history)
  assert got == sorted(f"python -m benchmarks lane{k} {i}" for k in range(4) for i in range(25))
  assert ".commands.lock" in (tmp_path / ".gitignore").read_text()


def test_a_broken_commands_json_is_refused_not_emptied(tmp_path):
  (tmp_path / "commands.json").write_text('[{"command": "earlier"}')
  with pytest.raises(ValueError, match="commands.json is not JSON"):
    runner.prepare_out(suite_lib.load("tiny"), tmp_path, ["compare"])
  assert (tmp_path / "commands.json").read_text() == '[{"command": "earlier"}'

"""Report, calibration and tuning selection from synthetic run records (nothing is trained).

The records have the exact shape `train.records` writes (run.json, epochs.jsonl, steps.jsonl)
plus the runner's bench.json, with values chosen so every figure can be checked by hand.
"""

import json
import pathlib
import warnings

import pytest

from benchmarks import __main__ as cli
from benchmarks import analysis
from benchmarks import compare
from benchmarks import plots
from benchmarks import report
from benchmarks import runner
from benchmarks import suite as suite_lib
from train import records

SUITE = """\
# A comment that calibrate must keep.
name = "synthetic"
description = "hand-made records"
seeds = [0, 1, 2]
strategies = ["fixed", "gradvar"]
baseline = "fixed"
epochs = 6
lr = 1e-3
lr_grid = [1e-3, 3e-3]
tune_seeds = [1000]

[defaults]
model_size = "tiny"   # a trailing comment

[tasks.rt_sentiment]
train_examples = 48
"""
THRESHOLD = 0.7
# Validation losses per (strategy, seed). fixed reaches 0.7 at epochs 3, 4, 5; gradvar at 2, 2
# and never (seed 2, which also ends on a non-finite loss: a divergence).
VAL = {
    ("fixed", 0): [1.0, 0.8, 0.7, 0.66, 0.65, 0.64],
    ("fixed", 1): [1.0, 0.9, 0.8, 0.69, 0.66, 0.65],
    ("fixed", 2): [1.0, 0.9, 0.8, 0.75, 0.70, 0.68],
    ("gradvar", 0): [0.9, 0.6, 0.6, 0.6, 0.6, 0.6],
    ("gradvar", 1): [0.9, 0.65, 0.62, 0.61, 0.6, 0.59],
    ("gradvar", 2): [0.9, 0.8, 0.75, 0.74, 0.73, None],
}
# Final validation accuracies: fixed 0.80, 0.82, 0.84; gradvar 0.85, 0.86, 0.90.
ACC = {("fixed", 0): 0.80, ("fixed", 1): 0.82, ("fixed", 2): 0.84,
       ("gradvar", 0): 0.85, ("gradvar", 1): 0.86, ("gradvar", 2): 0.90}


def write_run(folder: pathlib.Path, val_losses, final_acc=0.8, strategy="fixed", end=True,
              steps_per_epoch=4, epoch_seconds=2.0):
  """One run folder as `python -m train` and the runner leave it."""
  folder.mkdir(parents=True, exist_ok=True)
  gradvar = strategy.startswith("gradvar")
  epochs, steps = [], []
  for i, v in enumerate(val_losses):
    epoch = i + 1
    epochs.append({
        "epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": 1.0 - 0.05 * i,
        "train_accuracy": 0.5, "val_loss": v,
        "val_accuracy": final_acc - 0.01 * (len(val_losses) - epoch),
        "effective_lr": 1e-3, "effective_lr_mean": 1e-3, "lr_scale": 1.0 if gradvar else None,
        "lr_scale_mean": 1.0 if gradvar else None, "variability_mean": 0.1,
        "train_time_s": epoch_seconds, "train_time_total_s": epoch_seconds * epoch,
        "elapsed_s": 3.0 * epoch, "cpu_time_s": 1.5, "examples_per_s": 64.0,
        "peak_rss_mb": 500.0 + epoch, "device_memory_mb": None})
    for k in range(steps_per_epoch):
      step = i * steps_per_epoch + k + 1
      steps.append({"step": step, "epoch": epoch, "loss": 1.0 - 0.01 * step, "accuracy": 0.5,
                    "grad_norm": 1.0, "effective_lr": 1e-3 * (1 + 0.05 * gradvar * k),
                    "lr_scale": 1 + 0.05 * k if gradvar else None,
                    "variability": 0.1 + 0.01 * k})
  (folder / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
  (folder / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
  info = {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-01T00:01:00+00:00" if end
          else None, "git": {"commit": "abc123", "dirty": False},
          "versions": {"jax": "0.10.2"}, "compile_s": 1.0,
          "hardware": {"device_kind": "cpu", "platform": "cpu", "device_count": 1,
                       "cpu": "test CPU", "cpu_cores": 2, "cpus_usable": 2, "host": "h",
                       "python": "3.11", "jax": "0.10.2", "load_avg_1m": 1.0},
          "test": {"test_loss": 0.5, "test_accuracy": final_acc - 0.02}}
  (folder / "run.json").write_text(json.dumps(info))
  (folder / "bench.json").write_text(json.dumps(
      {"attempts": [{"rc": 0, "wall_s": 60.0, "cpu_s": 20.0, "max_rss_mb": 600.0}]}))


def make_out(tmp_path, thresholds=True) -> pathlib.Path:
  out = tmp_path / "out"
  out.mkdir()
  text = SUITE
  if thresholds:
    text += (f'\n[calibration]\nrule = "test"\n[calibration.thresholds]\n'
             f"rt_sentiment = {THRESHOLD}\n")
  (out / "suite.toml").write_text(text)
  suite = suite_lib.parse(text)
  for (strategy, seed), losses in VAL.items():
    write_run(out / suite.run("rt_sentiment", strategy, seed).relpath(), losses,
              ACC[(strategy, seed)], strategy)
  return out


def test_report_figures_from_records(tmp_path):
  out = make_out(tmp_path)
  text = report.write(out)
  results = json.loads((out / "results.json").read_text())
  groups = results["tasks"]["rt_sentiment"]["settings"]["untuned"]["strategies"]
  fixed, gradvar = groups["fixed"], groups["gradvar"]

  assert fixed["reach"]["epochs_to_threshold"]["values"] == {"0": 3, "1": 4, "2": 5}
  assert fixed["reach"]["epochs_to_threshold"]["median"] == 4
  assert gradvar["reach"]["epochs_to_threshold"]["values"] == {"0": 2, "1": 2, "2": None}
  assert gradvar["reach"]["epochs_to_threshold"]["reached"] == 2
  assert gradvar["reach"]["epochs_to_threshold"]["median"] == 2  # median of 2, 2, n.r.
  # Seconds to threshold: 2 s per epoch on the training clock.
  assert fixed["reach"]["seconds_to_threshold"]["values"] == {"0": 6.0, "1": 8.0, "2": 10.0}
  assert gradvar["divergences"] == 1 and fixed["divergences"] == 0

  acc = fixed["summary"]["final_val_accuracy"]
  # 0.80, 0.82, 0.84: mean 0.82, sd 0.02, half-width t(0.975, 2) * 0.02 / sqrt(3).
  assert acc["mean"] == pytest.approx(0.82)
  assert acc["sd"] == pytest.approx(0.02)
  assert acc["half_width"] == pytest.approx(4.302653 * 0.02 / 3 ** 0.5, rel=1e-5)
  # Stability of fixed seed 0: pstdev of its last five losses.
  assert fixed["per_seed"]["0"]["stability"] == pytest.approx(0.0586515, rel=1e-5)
  # gradvar seed 2 ends non-finite: no stability, so the mean is over 2 seeds.
  assert gradvar["summary"]["stability"]["n"] == 2

  paired = results["tasks"]["rt_sentiment"]["settings"]["untuned"]["paired"]["gradvar"]
  # Accuracy differences 0.05, 0.04, 0.06: mean 0.05, sd 0.01; CI excludes 0.
  diff = paired["final_val_accuracy"]
  assert diff["mean"] == pytest.approx(0.05)
  assert diff["half_width"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5, rel=1e-5)
  assert diff["includes_zero"] is False
  assert paired["epochs_to_threshold"] == {"better": 2, "tie": 0, "worse": 1}

  md = (out / "REPORT.md").read_text()
  assert "2/3; median 2 [2, 2, n.r.]" in md
  assert "3/3; median 4 [3, 4, 5]" in md
  assert "2.48 standard deviations" in md  # t(0.975, 2) / sqrt(3) with 3 seeds
  assert "abc123" in md and "test CPU" in md
  assert "| gradvar | final val acc | 3 | 0.0500 |" in md and "**no**" in md
  assert "2/3; median 2 [2, 2, n.r.]" in text  # the printed summary

  names = {"val_loss_rt_sentiment.png", "effective_lr_rt_sentiment.png",
           "gradvar_rt_sentiment.png", "summary_rt_sentiment.png"}
  assert set(results["plots"]["rt_sentiment"]) == names
  for name in names:
    data = (out / "plots" / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert f"(plots/{name})" in md
  _assert_plot_names_without_drawing(out, tmp_path, results)


def _assert_plot_names_without_drawing(out, tmp_path, results):
  """render=False names the very plots that drawing them wrote, and draws nothing."""
  collected, runs = analysis.collect(out)
  assert plots.write_all(collected, runs, tmp_path / "none", render=False) == results["plots"]
  assert not (tmp_path / "none").exists()


def test_report_fails_naming_the_file_and_field_of_a_renamed_record(tmp_path, capsys):
  out = make_out(tmp_path)
  suite = suite_lib.parse((out / "suite.toml").read_text())
  epochs = out / suite.run("rt_sentiment", "gradvar", 1).relpath() / "epochs.jsonl"
  epochs.write_text(epochs.read_text().replace('"val_accuracy"', '"valid_accuracy"', 1))
  assert cli.main(["report", str(out)]) == 2
  err = capsys.readouterr().err
  assert f"error: {epochs}:1: EpochRow lacks the required field(s) val_accuracy" in err
  assert not (out / "results.json").exists()


def test_report_refuses_records_of_a_newer_schema(tmp_path):
  out = make_out(tmp_path)
  suite = suite_lib.parse((out / "suite.toml").read_text())
  run_json = out / suite.run("rt_sentiment", "fixed", 2).relpath() / "run.json"
  newer = records.SCHEMA_VERSION + 1
  run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "records_schema": newer}))
  with pytest.raises(ValueError, match=f"{run_json}: records_schema is {newer}"):
    report.write(out)


def test_report_lists_missing_runs_and_needs_no_threshold(tmp_path):
  out = make_out(tmp_path, thresholds=False)
  suite = suite_lib.parse((out / "suite.toml").read_text())
  unfinished = out / suite.run("rt_sentiment", "gradvar", 1).relpath()
  write_run(unfinished, VAL[("gradvar", 1)], strategy="gradvar", end=False)
  report.write(out)
  results = json.loads((out / "results.json").read_text())
  gradvar = results["tasks"]["rt_sentiment"]["settings"]["untuned"]["strategies"]["gradvar"]
  assert gradvar["seeds"] == [0, 2] and gradvar["missing_seeds"] == [1]
  assert gradvar["reach"]["epochs_to_threshold"]["median"] is None
  md = (out / "REPORT.md").read_text()
  assert "## Missing runs" in md and "rt_sentiment / untuned / gradvar: seeds [1]" in md
  assert "not calibrated" in md


def test_report_rejects_a_folder_without_suite(tmp_path):
  with pytest.raises(ValueError, match="suite.toml"):
    report.write(tmp_path)


def test_calibrate_from_reference_runs(tmp_path, monkeypatch):
  """Finished reference runs are read, not retrained; the thresholds go into the suite file."""
  suite_path = tmp_path / "synthetic.toml"
  suite_path.write_text(SUITE)
  suite = suite_lib.load(str(suite_path))
  out = tmp_path / "out"
  best = {100: 0.50, 101: 0.40, 102: 0.60}
  for seed, b in best.items():
    write_run(out / suite.run("rt_sentiment", "fixed", seed, kind="reference").relpath(),
              [1.0, b, b + 0.05])
  monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("nothing should train"))
  assert compare.calibrate(suite, out, ["calibrate"], progress=False) == 0

  text = suite_path.read_text()
  assert text.startswith("# A comment that calibrate must keep.")
  assert 'model_size = "tiny"   # a trailing comment' in text
  calibrated = suite_lib.load(str(suite_path))
  # median(0.5, 0.4, 0.6) x 1.05
  assert calibrated.calibration.thresholds == {"rt_sentiment": pytest.approx(0.525)}
  raw = calibrated.calibration.raw
  assert raw["reference_seeds"] == [100, 101, 102] and raw["strategy"] == "fixed"
  assert raw["reference_best_val_loss"]["rt_sentiment"] == [0.5, 0.4, 0.6]
  assert "median over the reference seeds" in raw["rule"]
  assert (out / "suite.toml").read_text() == text

  # Another task calibrated by another process meanwhile (two lanes): its threshold is kept,
  # although this process loaded the file before it was written.
  stale = suite_lib.load(str(suite_path))
  other = dict(raw, thresholds={**raw["thresholds"], "fashion_mnist": 0.7},
               lr={"fashion_mnist": 3e-3})
  suite_path.write_text(suite_lib.with_calibration(text, other))
  assert compare.calibrate(stale, out, ["calibrate"], progress=False) == 0
  again = suite_lib.load(str(suite_path)).calibration
  assert again.thresholds == {"rt_sentiment": pytest.approx(0.525), "fashion_mnist": 0.7}


def _tuned_runs(suite, out):
  """The evaluation runs the runner would train at the tuned LRs."""
  return compare.adaptive_runs(suite, compare.evaluation_lrs(suite, out, tuned=True))


def test_tune_picks_on_tuning_seeds_and_reports_side_by_side(tmp_path, monkeypatch):
  """--tune with every run already present: the pick, the tuned runs and the report."""
  out = make_out(tmp_path)
  suite = suite_lib.parse((out / "suite.toml").read_text(), out / "suite.toml")
  # Tuning seed 1000: fixed is best at 3e-3, gradvar at 1e-3 (3e-3 diverges for it).
  tune = {("fixed", 1e-3): [0.9, 0.7], ("fixed", 3e-3): [0.9, 0.6],
          ("gradvar", 1e-3): [0.9, 0.65], ("gradvar", 3e-3): [0.9, None]}
  def tune_run(strategy, lr):
    write_run(out / suite.run("rt_sentiment", strategy, 1000, lr=lr, kind="tune").relpath(),
              tune[(strategy, lr)], strategy=strategy)

  for strategy, lr in list(tune)[:3]:
    tune_run(strategy, lr)
  # gradvar's tuning is incomplete: it gets no tuned runs yet, and the report no tuned table.
  assert not analysis.tuning_selection(suite, out)["rt_sentiment"]["gradvar"]["complete"]
  assert {r.strategy for r in _tuned_runs(suite, out)} == {"fixed"}
  report.write(out)
  assert "Tuning is incomplete" in (out / "REPORT.md").read_text()
  tune_run("gradvar", 3e-3)
  for seed in suite.seeds:  # the evaluation seeds at fixed's picked LR
    write_run(out / suite.run("rt_sentiment", "fixed", seed, lr=3e-3).relpath(),
              [0.9, 0.65, 0.6], 0.9)
  picks = analysis.tuning_selection(suite, out)
  assert picks["rt_sentiment"]["fixed"]["lr"] == 3e-3
  assert picks["rt_sentiment"]["gradvar"]["lr"] == 1e-3
  runs = _tuned_runs(suite, out)
  assert {(r.strategy, r.lr, r.seed) for r in runs} == (
      {("fixed", 3e-3, s) for s in suite.seeds} | {("gradvar", 1e-3, s) for s in suite.seeds})

  monkeypatch.setattr(runner, "execute", lambda *a, **k: pytest.fail("nothing should train"))
  assert compare.compare(suite, out, ["compare", "--tune"], tune=True, progress=False) == 0
  results = json.loads((out / "results.json").read_text())
  tuned = results["tasks"]["rt_sentiment"]["settings"]["tuned"]["strategies"]
  assert tuned["fixed"]["lr"] == 3e-3 and tuned["fixed"]["seeds"] == [0, 1, 2]
  assert tuned["fixed"]["reach"]["epochs_to_threshold"]["values"] == {"0": 2, "1": 2, "2": 2}
  # gradvar kept 1e-3, so its tuned runs are its untuned ones.
  assert tuned["gradvar"]["per_seed"] == (
      results["tasks"]["rt_sentiment"]["settings"]["untuned"]["strategies"]["gradvar"]
      ["per_seed"])
  md = (out / "REPORT.md").read_text()
  assert "### Tuning" in md and "Untuned and tuned side by side" in md
  assert "| gradvar | **0.6500** | diverged | 0.001 |" in md
  assert (out / "plots" / "val_loss_rt_sentiment_tuned.png").exists()
  assert (out / "plots" / "summary_rt_sentiment_tuned.png").exists()
  _assert_plot_names_without_drawing(out, tmp_path, results)


def test_the_scale_plot_has_no_empty_variability_panel_without_gradvar(tmp_path, monkeypatch):
  # A rule that logs lr_scale but no variability (gns, stationarity): one panel, and no legend
  # warning from an empty one.
  out = make_out(tmp_path)
  for steps in out.glob("runs/rt_sentiment/gradvar/*/*/steps.jsonl"):
    rows = [json.loads(line) for line in steps.read_text().splitlines()]
    steps.write_text("".join(json.dumps({**r, "variability": None}) + "\n" for r in rows))
  results, runs = analysis.collect(out)
  panels, subplots = [], plots.plt.subplots
  monkeypatch.setattr(plots.plt, "subplots",
                      lambda *a, **k: panels.append(a[:2]) or subplots(*a, **k))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert plots.gradvar(results, runs, "rt_sentiment", tmp_path / "g.png") == "g.png"
  assert panels == [()] and (tmp_path / "g.png").stat().st_size > 0

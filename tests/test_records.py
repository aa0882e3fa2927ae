"""The records' schema: the rows the Recorder writes and the readers give back (nothing trains)."""

import json
import math
import pathlib

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader

from train import records

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"
# A committed run of each kind: with gradvar (lr_scale recorded) and without (lr_scale null).
COMMITTED = [RESULTS / "cpu" / "runs" / "rt_sentiment" / s / "lr0.001" / "seed0"
             for s in ("gradvar", "fixed")]

STEP = {"step": 5, "epoch": 1, "loss": 0.7, "accuracy": 0.5, "grad_norm": 1.5,
        "readouts": {"lr_scale": math.nan, "variability": math.nan}, "effective_lr": 1e-3}
EPOCH = {"epoch": 1, "step": 10, "train_loss": 0.7, "train_accuracy": 0.5, "val_loss": 0.68,
         "val_accuracy": 0.55, "effective_lr": 1e-3, "effective_lr_mean": 1e-3,
         "readout_means": {"lr_scale": 1.05, "variability": 0.2}, "train_time_s": 2.0,
         "train_time_total_s": 2.0, "elapsed_s": 5.0, "cpu_time_s": 1.9,
         "examples_per_s": 160.0, "peak_rss_mb": 700.0, "device_memory_mb": None}


def _tags(workdir: pathlib.Path) -> set[str]:
  events = list((workdir / "tb").glob("events.out.tfevents.*"))
  return {v.tag for e in event_file_loader.EventFileLoader(str(events[0])).Load()
          for v in e.summary.value}


@pytest.mark.parametrize("run", COMMITTED, ids=lambda p: p.parts[-3])
def test_committed_records_read_as_schema_3_and_write_back_the_same_rows(run, tmp_path):
  """Rows of schema 1 read into today's types (their readouts in one mapping) and, written
  again (schema 3), read back equal."""
  steps = records.read_steps(run / "steps.jsonl")
  epochs = records.read_epochs(run / "epochs.jsonl")
  assert steps and epochs and all(isinstance(r, records.StepRow) for r in steps)
  raw = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
  assert [r.lr_scale for r in steps] == [r["lr_scale"] for r in raw]
  assert [r.readouts for r in steps] == [
      {k: r[k] for k in ("lr_scale", "variability") if r[k] is not None} for r in raw]
  raw = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
  assert [r.lr_scale_mean for r in epochs] == [r["lr_scale_mean"] for r in raw]
  for name, as_rows in (("typed", lambda rows: rows),
                        ("dicts", lambda rows: [r.as_dict() for r in rows])):
    recorder = records.Recorder(tmp_path / name)
    recorder.steps(as_rows(steps))
    for row in as_rows(epochs):
      recorder.epoch(row)
    recorder.close()
    assert records.read_steps(tmp_path / name / "steps.jsonl") == steps
    assert records.read_epochs(tmp_path / name / "epochs.jsonl") == epochs


def test_rows_are_written_as_before_with_nan_as_null_and_scalars_in_tensorboard(tmp_path):
  recorder = records.Recorder(tmp_path)
  recorder.steps([STEP, records.StepRow(**{**STEP, "step": 10, "readouts": {"lr_scale": 1.0}})])
  recorder.epoch(records.EpochRow(**EPOCH))
  recorder.epoch({**EPOCH, "epoch": 2, "nonfinite_steps": 3})
  recorder.close()
  lines = (tmp_path / "steps.jsonl").read_text().splitlines()
  # Sorted keys; readouts without a value left out, and no mapping when none has one.
  assert lines[0] == ('{"accuracy": 0.5, "effective_lr": 0.001, "epoch": 1, "grad_norm": 1.5, '
                      '"loss": 0.7, "step": 5}')
  assert json.loads(lines[1])["readouts"] == {"lr_scale": 1.0}
  epochs = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
  assert epochs[0] == EPOCH  # no nonfinite_steps key when it is not counted
  assert epochs[1] == {**EPOCH, "epoch": 2, "nonfinite_steps": 3}
  assert [r.nonfinite_steps for r in records.read_epochs(tmp_path / "epochs.jsonl")] == [None, 3]
  assert records.read_steps(tmp_path / "steps.jsonl")[0].lr_scale is None
  tags = _tags(tmp_path)
  assert {"step/loss", "step/lr_scale", "epoch/val_loss", "epoch/nonfinite_steps",
          "epoch/lr_scale_mean"} <= tags
  assert not {"step/step", "step/epoch", "epoch/epoch", "epoch/device_memory_mb"} & tags


@pytest.mark.parametrize("method, row, field", [
    ("steps", {**STEP, "learning_rate": 1e-3}, "learning_rate"),
    ("epoch", {**EPOCH, "val_los": 0.5}, "val_los"),
])
def test_the_recorder_refuses_an_unknown_field_and_writes_nothing(method, row, field, tmp_path):
  recorder = records.Recorder(tmp_path, enabled=False)  # checked on every process
  with pytest.raises(ValueError, match=f"has no field.* {field}"):
    getattr(recorder, method)([row] if method == "steps" else row)
  assert not list(tmp_path.glob("*.jsonl"))


def test_a_row_of_the_wrong_kind_or_type_is_refused():
  recorder = records.Recorder(pathlib.Path("unused"), enabled=False)
  with pytest.raises(ValueError, match="expected a StepRow"):
    recorder.steps([records.EpochRow(**EPOCH)])
  with pytest.raises(ValueError, match="EpochRow.epoch must be int, got 1.0"):
    records.EpochRow(**{**EPOCH, "epoch": 1.0})
  with pytest.raises(ValueError, match="StepRow.loss must be int or float or None, got '0.7'"):
    records.StepRow(**{**STEP, "loss": "0.7"})
  with pytest.raises(ValueError, match="StepRow.step must be int, got True"):
    records.StepRow(**{**STEP, "step": True})


def test_step_row_from_the_train_step_metrics():
  metrics = {k: np.float32(v) for k, v in STEP.items() if k not in ("step", "epoch", "readouts")}
  row = records.StepRow.from_metrics(5, 1, {**metrics, "lr_scale": np.float32(math.nan)})
  assert row.loss == float(np.float32(0.7)) and type(row.loss) is float
  assert row.lr_scale is None and row.readouts == {}  # a NaN readout has no value
  # Every metric beyond the step's own is a readout of the strategy.
  assert records.StepRow.from_metrics(5, 1, {**metrics, "gns": np.float32(1.0)}).readouts == {
      "gns": 1.0}
  with pytest.raises(ValueError, match="readouts\\['x'\\] must be a number"):
    records.StepRow(**{**STEP, "readouts": {"x": "1"}})
  with pytest.raises(ValueError, match="lacks the required field.* grad_norm"):
    records.StepRow.from_metrics(5, 1, {k: v for k, v in metrics.items() if k != "grad_norm"})


def test_reading_names_the_file_line_and_field(tmp_path):
  path = tmp_path / "epochs.jsonl"
  renamed = {("validation_loss" if k == "val_loss" else k): v for k, v in EPOCH.items()}
  path.write_text(json.dumps(EPOCH) + "\n" + json.dumps(renamed) + "\n")
  with pytest.raises(ValueError, match=rf"{path}:2: EpochRow lacks the required field\(s\) "
                                       "val_loss"):
    records.read_epochs(path)
  path.write_text(json.dumps({**EPOCH, "extra": 1}) + "\n")
  with pytest.raises(ValueError, match=rf"{path}:1: EpochRow .*has no field\(s\) extra"):
    records.read_epochs(path)
  path.write_text(json.dumps({**EPOCH, "step": "ten"}) + "\n")
  with pytest.raises(ValueError, match=rf"{path}:1: EpochRow.step must be int"):
    records.read_epochs(path)


def test_a_last_line_cut_short_is_dropped_a_damaged_one_before_it_is_an_error(tmp_path):
  path = tmp_path / "steps.jsonl"
  line = json.dumps(records.StepRow(**STEP).as_dict())
  path.write_text(line + "\n" + line[:20])
  assert [r.step for r in records.read_steps(path)] == [5]
  path.write_text(line[:20] + "\n" + line + "\n")
  with pytest.raises(ValueError, match=f"{path}:1: not a JSON object"):
    records.read_steps(path)
  assert records.read_steps(tmp_path / "absent.jsonl", missing_ok=True) == []
  with pytest.raises(FileNotFoundError):
    records.read_steps(tmp_path / "absent.jsonl")


def test_run_json_records_the_schema_version(tmp_path):
  recorder = records.Recorder(tmp_path)
  recorder.write_json("run.json", {"start": "now"})
  recorder.write_json("bench.json", {"attempts": []})
  recorder.close()
  info = json.loads((tmp_path / "run.json").read_text())
  assert info == {"start": "now", "records_schema": records.SCHEMA_VERSION}
  assert "records_schema" not in json.loads((tmp_path / "bench.json").read_text())
  assert records.schema_version(info) == records.SCHEMA_VERSION
  assert records.schema_version({"start": "then"}) == 1  # written before the version existed
  with pytest.raises(ValueError, match="x/run.json: records_schema is 99; this code reads"):
    records.schema_version({"records_schema": 99}, "x/run.json")


def test_the_hardware_record_tells_cpus_apart_beyond_their_model_name(monkeypatch):
  # Two VMs both say "AMD EPYC"; family/model/stepping and the ISA flags differ (XLA's CPU code
  # follows the flags, so their records differ in the last bits).
  zen3 = {"model name": "AMD EPYC", "cpu family": "25", "model": "1", "stepping": "1",
          "flags": "fpu sse2 avx2"}
  zen4 = {**zen3, "model": "17", "flags": "avx2 fpu sse2 avx512f"}
  a, b = records._cpu_identity(zen3), records._cpu_identity(zen4)
  assert a["cpu_id"] == "family 25 model 1 stepping 1" != b["cpu_id"]
  assert a["cpu_flags_sha1"] != b["cpu_flags_sha1"] and len(a["cpu_flags_sha1"]) == 12
  # The flags' order does not matter; a machine without /proc/cpuinfo gives no fields.
  assert records._cpu_identity({**zen3, "flags": "avx2 sse2 fpu"}) == a
  assert records._cpu_identity({}) == {}
  monkeypatch.setattr(records, "_cpuinfo", lambda: zen4)
  assert {k: records.hardware()[k] for k in ("cpu", "cpu_id", "cpu_flags_sha1")} == {
      "cpu": "AMD EPYC", **b}

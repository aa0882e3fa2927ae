"""benchmarks.perf.step_cost: the file it writes, and its interleaving (no real timing)."""

import json
import types

import pytest

from benchmarks import declared
from benchmarks import sections
from benchmarks import suite as suite_lib
from benchmarks.perf import step_cost


@pytest.mark.slow  # two compiled steps; minutes on a busy 2-core machine
def test_step_cost_on_the_tiny_preset_writes_ratios_to_fixed(tmp_path):
  assert step_cost.main(["--suite", "tiny", "--out", str(tmp_path), "--repeats", "2",
                         "--steps", "1"]) == 0
  payload = json.loads((tmp_path / "step_cost.json").read_text())
  assert payload["command"] == (f"python -m benchmarks.perf.step_cost --suite tiny --out "
                                f"{tmp_path} --repeats 2 --steps 1")
  assert payload["hardware"]["device_kind"] and payload["reference"] == "fixed"
  task = payload["tasks"]["rt_sentiment"]
  assert set(task["ratios"]) == {"fixed", "gradvar"} and task["ratios"]["fixed"] == 1.0
  assert all(len(v) == 2 and all(x > 0 for x in v) for v in task["samples"].values())
  assert task["ratios"]["gradvar"] == (task["seconds_per_step"]["gradvar"]
                                       / task["seconds_per_step"]["fixed"])
  # The report reads the same ratios for its time to target.
  assert declared.cost_ratios(payload, "rt_sentiment") == task["ratios"]


def test_repeats_interleave_the_strategies_and_take_medians(monkeypatch):
  calls = []
  seconds = {"fixed": iter([1.0, 3.0, 2.0, 9.0]), "gradvar": iter([2.0, 4.0, 6.0, 5.0])}
  # gradvar stands in for a run with groups every 2nd step: timed over multiples of 2 steps.
  monkeypatch.setattr(step_cost, "_prepare", lambda run, *a: types.SimpleNamespace(
      name=run.strategy, every=2 if run.strategy == "gradvar" else 1))
  def fake_time(timed, steps, offset):
    calls.append((timed.name, steps, offset))
    return next(seconds[timed.name])
  monkeypatch.setattr(step_cost, "_time", fake_time)
  suite = suite_lib.load("tiny")
  got = step_cost.measure_task(suite, "rt_sentiment", ["fixed", "gradvar"], repeats=3, steps=5)
  # One untimed warm-up step each, then the order rotates between repeats.
  assert [c[0] for c in calls] == ["fixed", "gradvar", "fixed", "gradvar", "gradvar", "fixed",
                                   "fixed", "gradvar"]
  assert calls[2:4] == [("fixed", 5, 0), ("gradvar", 6, 0)]
  assert calls[4:6] == [("gradvar", 6, 6), ("fixed", 5, 5)]
  # Timed: fixed 3, 2, 9 -> median 3; gradvar 4, 6, 5 -> median 5.
  assert got["seconds_per_step"] == {"fixed": 3.0, "gradvar": 5.0}
  assert got["ratios"] == {"fixed": 1.0, "gradvar": 5.0 / 3.0}
  assert got["gns_every"] == {"gradvar": 2}


def test_step_cost_needs_fixed(tmp_path, capsys):
  assert step_cost.main(["--suite", "tiny", "--out", str(tmp_path), "--strategies",
                         "gradvar"]) == 2
  assert "'fixed'" in capsys.readouterr().err
  assert not (tmp_path / "step_cost.json").exists()


def test_a_replay_control_is_timed_on_a_stand_in_record(tmp_path):
  # replay-X's step needs a recorded X run; the stand-in holds X's LR from step 1 on.
  from train import control_kinds
  from train import controls
  kind = control_kinds.get(step_cost.suite_lib.control_of("replay-gns")[0])
  source = kind.stand_in(tmp_path / "src", "gns", 3e-4)["replay_from"]
  path = controls.read_path(source, 1284, "gns")
  assert path.shape == (control_kinds.STAND_IN_LAST_STEP,)
  assert path.min() == path.max() == pytest.approx(3e-4)


def test_each_task_is_timed_on_its_own_arms(monkeypatch, tmp_path):
  seen = {}
  def fake_measure(suite, task, strategies, *a, **k):
    seen[task] = list(strategies)
    return {"seconds_per_step": dict.fromkeys(strategies, 1.0),
            "ratios": dict.fromkeys(strategies, 1.0), "samples": {}}
  monkeypatch.setattr(step_cost, "measure_task", fake_measure)
  assert step_cost.main(["--suite", "cpu-v2", "--out", str(tmp_path)]) == 0
  suite = suite_lib.load("cpu-v2")
  assert seen == {t: list(suite.task_strategies(t)) for t in suite.tasks}
  assert "replay-gns" in seen["fashion_mnist"] and "step" not in seen["fashion_mnist"]


def test_a_run_on_some_tasks_keeps_the_others_and_says_which_command_measured_each(
    monkeypatch, tmp_path):
  def fake_measure(suite, task, strategies, *a, **k):
    return {"seconds_per_step": dict.fromkeys(strategies, 2.0),
            "ratios": dict.fromkeys(strategies, 1.0), "samples": {}}
  monkeypatch.setattr(step_cost, "measure_task", fake_measure)
  out = ["--suite", "cpu-v2", "--out", str(tmp_path)]
  assert step_cost.main(out + ["--tasks", "rt_sentiment", "fashion_mnist"]) == 0
  assert step_cost.main(out + ["--tasks", "wordnet_topics", "--repeats", "3"]) == 0
  payload = json.loads((tmp_path / "step_cost.json").read_text())
  assert set(payload["tasks"]) == {"rt_sentiment", "fashion_mnist", "wordnet_topics"}
  first, second = (payload["tasks"][t]["command"] for t in ("rt_sentiment", "wordnet_topics"))
  assert "--tasks rt_sentiment fashion_mnist" in first and "--repeats 3" in second
  assert payload["tasks"]["fashion_mnist"]["repeats"] == 20
  assert payload["tasks"]["wordnet_topics"]["repeats"] == 3 and payload["command"] == second
  # The report names each command with the tasks it measured.
  sc = declared._step_cost_provenance(payload)
  assert sc["tasks_by_command"] == {first: ["rt_sentiment", "fashion_mnist"],
                                    second: ["wordnet_topics"]}
  text = sections._measured_by(sc)
  assert f"`{first}` (rt_sentiment, fashion_mnist)" in text
  assert f"`{second}` (wordnet_topics)" in text


def test_a_broken_step_cost_file_is_refused_before_any_timing_and_left_alone(
    monkeypatch, tmp_path, capsys):
  timed = []
  def fake_measure(suite, task, strategies, *a, **k):
    timed.append(task)
    return {"seconds_per_step": dict.fromkeys(strategies, 1.0),
            "ratios": dict.fromkeys(strategies, 1.0), "samples": {}}
  monkeypatch.setattr(step_cost, "measure_task", fake_measure)
  (tmp_path / "step_cost.json").write_text("{not json")
  assert step_cost.main(["--suite", "cpu-v2", "--out", str(tmp_path), "--tasks",
                         "rt_sentiment"]) == 2
  assert (tmp_path / "step_cost.json").read_text() == "{not json"
  assert timed == [] and "step_cost.json is not JSON" in capsys.readouterr().err

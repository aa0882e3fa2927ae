"""The strategy registry's declarations (`strategies.spec`) and the control kinds' registry."""

import math

import jax
import jax.numpy as jnp
import pytest

from train import control_kinds
from train import strategies


def test_every_spec_is_readable_without_building_and_its_controls_map_both_ways():
  for name in strategies.names():
    spec = strategies.spec(name)
    assert spec.name == name and spec.role in strategies.ROLES
    if spec.role == "control":
      kind, rule = spec.control
      assert control_kinds.get(kind).name_of(rule) == name
      assert strategies.control_of(name) == (kind, rule)
      assert kind in strategies.spec(rule).controls
    else:
      assert strategies.control_of(name) is None
    for kind in spec.controls:
      assert strategies.control_of(control_kinds.get(kind).name_of(name)) == (kind, name)
  assert strategies.control_of("no-such-strategy") is None
  assert strategies.names("adaptive") == ["gns", "gradvar", "stationarity"]
  stationarity = strategies.spec("stationarity")
  assert not stationarity.needs_horizon and stationarity.controls == ("replay",)
  assert set(stationarity.readouts) == {"lr_scale", "drops", "test_step", "test_mean",
                                        "test_lower", "test_upper"}
  assert stationarity.eval_readouts() == ("lr_scale", "drops")
  assert strategies.spec("replay-stationarity").needs_horizon  # it replays a path of steps
  gns = strategies.spec("gns")
  assert gns.update_args == ("group_sq_norm", "num_groups") and gns.uses_groups
  assert set(gns.readouts) == {"lr_scale", "noise_to_signal"} and gns.needs_horizon
  assert strategies.spec("matched-gns").batchnorm_groups
  assert not strategies.spec("matched-gradvar").batchnorm_groups
  assert strategies.spec("gradvar").eval_readouts() == ("lr_scale",)


@pytest.mark.parametrize("name", [n for n in strategies.names() if strategies.spec(n).readouts])
def test_declared_readouts_read_the_built_optimizer_state(name, tmp_path):
  spec = strategies.spec(name)
  replay_from = None
  if spec.control and control_kinds.get(spec.control[0]).stand_in:
    stand_in = control_kinds.get(spec.control[0]).stand_in
    replay_from = stand_in(tmp_path / "source", spec.control[1], 1e-3)["replay_from"]
  strategy = strategies.build(name, strategies.StrategyArgs(1e-3, 4, 2, 0, replay_from))
  assert strategy.spec is spec
  state = strategy.optimizer.init({"w": jnp.ones(3)})
  for readout in spec.readouts.values():
    value = jax.jit(readout.read)(state)
    assert value.shape == () and math.isfinite(float(value))


def test_register_refuses_what_it_cannot_declare(monkeypatch):
  from train import strategy_registry
  monkeypatch.setattr(strategy_registry, "_REGISTRY", dict(strategy_registry._REGISTRY))
  monkeypatch.setattr(strategy_registry, "_SPECS", dict(strategy_registry._SPECS))
  build = lambda args: None
  with pytest.raises(ValueError, match="role must be one of"):
    strategies.register("x", role="clever")(build)
  with pytest.raises(ValueError, match="a control, and only a control"):
    strategies.register("x", role="control")(build)
  with pytest.raises(ValueError, match="a null control of 'gns' is named 'gns-null'"):
    strategies.register("x", role="control", control=("null", "gns"))(build)
  with pytest.raises(ValueError, match="readouts may not be named loss"):
    strategies.register("x", role="adaptive",
                        readouts={"loss": strategies.LR_SCALE})(build)
  with pytest.raises(ValueError, match="unknown control kind 'halved'"):
    strategies.register("x", role="adaptive", controls=("halved",))(build)
  with pytest.raises(ValueError, match="registered twice"):
    strategies.register("fixed", role="baseline")(build)
  with pytest.raises(ValueError, match="unknown strategy 'x'"):
    strategies.spec("x")


def test_control_kinds_plan_their_runs(tmp_path):
  source = control_kinds.Source("gradvar", 1e-3, 1, tmp_path / "runs/gradvar/seed1",
                                tmp_path.relative_to(tmp_path) / "runs/gradvar/seed1", tmp_path)
  null = control_kinds.get("null").plan(source)
  assert (null.lr, null.options, dict(null.info)) == (1e-3, (), {"source": None, "lr": 1e-3})
  replay = control_kinds.get("replay").plan(source)
  assert replay.options == (("replay_from", "runs/gradvar/seed1"),) and replay.lr == 1e-3
  assert dict(replay.info)["source_seed"] == 1
  assert control_kinds.control_json("replay-gradvar", replay, "gradvar")["of"] == "gradvar"
  assert [k.name for k in control_kinds.ranked()][:3] == ["null", "replay", "matched"]
  assert control_kinds.get("replay").source_seed((0, 1, 2), 2) == 0
  assert control_kinds.get("matched").source_seed((0, 1, 2), 2) == 2
  with pytest.raises(ValueError, match="unknown control kind 'x'"):
    control_kinds.get("x")

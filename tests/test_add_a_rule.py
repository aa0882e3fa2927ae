"""A new rule, its new kind of control and a new metric, added from this file alone.

`add_the_rule` registers, through the public registries only:
- `norm-ema`, an adaptive strategy: Adam's step divided by 1 + a moving average of the gradient
  norm, with that average as its readout (`grad_norm_ema`);
- `final`, a control kind: fixed Adam at the LR its rule ended its run at (`final-norm-ema`);
- `last_train_loss`, a metric (`benchmarks.catalogue.register`).

The test then runs a tiny suite through `tune`, `calibrate`, `compare` and `report` with real
`python -m train` runs, made by this file run as a script (`python -m tests.test_add_a_rule`), which
registers the same rule first; and it finds the three in results.json and REPORT.md.
"""

import json
import os
import pathlib
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

from train import control_kinds
from train import controls
from train import records
from train import strategies
from train import strategy_registry

REPO = pathlib.Path(__file__).resolve().parents[1]


class NormEmaState(NamedTuple):
  grad_norm_ema: jax.Array  # float32: the moving average of the gradient's global norm
  inner_state: Any


def norm_ema(base: optax.GradientTransformation, decay: float = 0.9):
  """`base`'s step divided by 1 + the moving average (`decay`) of the gradient's global norm."""

  def init(params):
    return NormEmaState(jnp.zeros([], jnp.float32), base.init(params))

  def update(updates, state, params=None, **extra):
    del extra
    inner_updates, inner = base.update(updates, state.inner_state, params)
    ema = decay * state.grad_norm_ema + (1 - decay) * optax.tree.norm(updates).astype(jnp.float32)
    return (jax.tree.map(lambda u: u / (1 + ema).astype(u.dtype), inner_updates),
            NormEmaState(ema, inner))

  return optax.GradientTransformationExtraArgs(init, update)


def _ema(state) -> jax.Array:
  return controls.find_state(state, NormEmaState).grad_norm_ema


def _final_plan(source: control_kinds.Source) -> control_kinds.Plan:
  """Fixed Adam at the effective LR of the last epoch of the rule's run."""
  lr = records.read_epochs(source.folder / "epochs.jsonl")[-1].effective_lr
  return control_kinds.Plan(lr=lr, info=(("source", str(source.relpath)), ("lr", lr),
                                         ("base_lr", source.base_lr)))


def _final_build(of: str):
  del of
  return lambda args: strategies.Strategy(optax.adam(args.lr), strategies.constant_lr(args.lr))


def _last_train_loss(run, threshold) -> float | None:
  del threshold
  return run.epochs[-1].train_loss if run.epochs else None


def add_the_rule() -> None:
  """Registers the rule, its control kind and its metric."""
  control_kinds.register(control_kinds.ControlKind(
      name="final", name_of=lambda of: f"final-{of}", plan=_final_plan, build=_final_build,
      lr_from_source=True, rank=3,
      description="`final-X` is fixed Adam at the LR X ended its run at"))

  @strategies.register("norm-ema", role="adaptive", controls=("final",),
                       readouts={"grad_norm_ema": strategies.Readout(_ema)})
  def _norm_ema(args):
    lr = args.lr
    return strategies.Strategy(norm_ema(optax.adam(lr)),
                               lambda before, after, step: lr / (1 + _ema(after)))

  from benchmarks import catalogue
  catalogue.register(catalogue.Metric("last_train_loss", "last epoch's train loss", "{:.4f}",
                                      compute=_last_train_loss))


SUITE = """\
name = "add-a-rule"
seeds = [0, 1]
strategies = ["norm-ema", "final-norm-ema"]
baseline = "norm-ema"
epochs = 2
lr_grid = [3e-3]  # one point, no bracketing: the fewest runs (6) through every command
max_extensions = 0
tune_seeds = [1000]
untuned_runs = false
[defaults]
model_size = "tiny"
batch_size = 16
num_devices = 1
log_every = 1
eval_every_steps = 2
eval_examples = 32
[tasks.rt_sentiment]
train_examples = 48
[calibration]
reference_seeds = [100]
[analysis]
{metric}primaries = ["rt_sentiment: norm-ema vs final-norm-ema"]
permutations = 100
bootstrap = 100
"""


@pytest.fixture
def registries(monkeypatch):
  """The registries as they are, restored after the test."""
  for module, names in ((strategy_registry, ("_REGISTRY", "_SPECS")),
                        (control_kinds, ("_KINDS",))):
    for name in names:
      monkeypatch.setattr(module, name, dict(getattr(module, name)))
  monkeypatch.setattr(strategies, "_REGISTRY", strategy_registry._REGISTRY)
  from benchmarks import catalogue
  monkeypatch.setattr(catalogue, "_CATALOGUE", dict(catalogue._CATALOGUE))


@pytest.mark.slow
def test_a_rule_its_control_kind_and_a_metric_from_one_file(tmp_path, monkeypatch, data_dir,
                                                             registries):
  from benchmarks import __main__ as benchmarks_main
  from benchmarks import report
  from benchmarks import runner

  add_the_rule()
  assert strategies.spec("final-norm-ema").control == ("final", "norm-ema")
  assert strategies.spec("norm-ema").role == "adaptive"
  path = tmp_path / "suite.toml"
  path.write_text(SUITE.format(metric='metric = "last_train_loss"\n'))
  out = tmp_path / "out"
  monkeypatch.setattr(runner, "command", lambda config_file, resume: [
      sys.executable, "-m", "tests.test_add_a_rule", "--config", str(config_file),
      *([f"--resume={resume}"] if resume else [])])
  # One device and no XLA backend optimisation: compiling is most of these runs' time.
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  where = ["--suite", str(path), "--out", str(out), "--data-dir", str(data_dir), "--no-progress"]
  for command in (["tune"], ["calibrate"], ["compare", "--tune", "--no-report"]):
    assert benchmarks_main.main(command + where) == 0, command

  # The rule logged its readout at every step; its control ran at the LR it ended at.
  rule = next((out / "runs/rt_sentiment/norm-ema").glob("lr*/seed0"))
  steps = records.read_steps(rule / "steps.jsonl")
  assert steps and all(r.readouts.keys() == {"grad_norm_ema"} for r in steps)
  assert all(r.readout("grad_norm_ema") > 0 for r in steps)
  final_lr = records.read_epochs(rule / "epochs.jsonl")[-1].effective_lr
  [control] = (out / "runs/rt_sentiment/final-norm-ema").glob("*/seed0/control.json")
  assert json.loads(control.read_text()) == {
      "control": "final-norm-ema", "of": "norm-ema", "lr": final_lr,
      "base_lr": float(rule.parent.name[2:]), "source": str(rule.relative_to(out))}

  report.write(out, render_plots=False)
  results = json.loads((out / "results.json").read_text())
  text = (out / "REPORT.md").read_text()
  assert results["strategies"] == ["norm-ema", "final-norm-ema"]
  assert [(c["a"], c["b"]) for c in results["controls"]] == [("norm-ema", "final-norm-ema")]
  assert "`final-X` is fixed Adam at the LR X ended its run at" in text
  assert "final-norm-ema" in text and "norm-ema" in text
  assert results["analysis"].get("metric") == "last_train_loss"
  assert "last_train_loss" in json.dumps(results["tasks"]) and "last epoch's train loss" in text


if __name__ == "__main__":
  # `python -m tests.test_add_a_rule --config FILE`: `python -m train` with the rule registered.
  add_the_rule()
  from train import __main__ as train_main
  os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
  sys.exit(train_main.main(sys.argv[1:]))

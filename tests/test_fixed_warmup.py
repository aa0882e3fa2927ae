"""`config.warmup_steps`: a fixed warmup for `gns` and `schedule-free`, the same at every run
length; without it their warmup is as before (one epoch, at most a tenth of the run)."""

import numpy as np
import pytest

from benchmarks import budgets
from benchmarks import suite as suite_lib
from train import config as config_lib
from train import strategies

LR = 1e-2


def sf_lrs(epochs, warmup_steps=None, steps=30):
  strategy = strategies.build("schedule-free", strategies.StrategyArgs(
      LR, 10, epochs, seed=0, replay_from=None, warmup_steps=warmup_steps))
  return np.array([float(strategy.effective_lr(None, None, k)) for k in range(steps)])


def test_schedule_free_with_a_fixed_warmup_is_the_same_at_every_run_length():
  short, long = sf_lrs(3, warmup_steps=7), sf_lrs(20, warmup_steps=7)
  np.testing.assert_array_equal(short, long)
  np.testing.assert_allclose(short[:8], LR * np.arange(8) / 7, rtol=1e-6)
  assert (short[7:] == np.float32(LR)).all()


def test_schedule_free_default_warmup_is_unchanged():
  # One epoch (10 steps) at most a tenth of the run: 3 steps for 3 epochs, 10 for 20.
  np.testing.assert_allclose(sf_lrs(3)[:4], LR * np.array([0, 1, 2, 3]) / 3, rtol=1e-6)
  np.testing.assert_allclose(sf_lrs(20)[:11], LR * np.arange(11) / 10, rtol=1e-6)


@pytest.mark.parametrize("warmup_steps, epochs, expected", [
    (None, 3, 3), (None, 20, 10), (12, 3, 12), (12, 20, 12)])
def test_gns_takes_the_fixed_warmup(monkeypatch, warmup_steps, epochs, expected):
  seen = {}
  real = strategies.gradvar_optax.gns

  def spy(inner, **kwargs):
    seen.update(kwargs)
    return real(inner, **kwargs)

  monkeypatch.setattr(strategies.gradvar_optax, "gns", spy)
  strategies.build("gns", strategies.StrategyArgs(LR, 10, epochs, seed=0, replay_from=None,
                                                  warmup_steps=warmup_steps))
  assert seen["warmup_steps"] == expected


def test_the_config_field_is_checked():
  with pytest.raises(ValueError, match="warmup_steps"):
    config_lib.validate(config_lib.Config(task="rt_sentiment", workdir="-", warmup_steps=0))
  assert strategies.spec("gns").fixed_warmup and strategies.spec("schedule-free").fixed_warmup
  assert not strategies.spec("cosine").fixed_warmup


SUITE = """\
name = "w"
seeds = [0, 1]
strategies = ["fixed", "cosine", "schedule-free", "gns", "matched-gns"]
epochs = 4
[defaults]
model_size = "tiny"
[tasks.rt_sentiment]
train_examples = 48
budgets = [2, 4]
"""


def test_a_fixed_warmup_makes_gns_and_schedule_free_horizon_free_in_a_budgeted_suite():
  without = suite_lib.parse(SUITE)
  assert without.strategies == ("fixed", "cosine", "cosine-e2", "schedule-free",
                                "schedule-free-e2", "gns", "gns-e2", "matched-gns")
  fixed = suite_lib.parse(SUITE.replace("budgets = [2, 4]", "budgets = [2, 4]\nwarmup_steps = 20"))
  assert fixed.strategies == ("fixed", "cosine", "cosine-e2", "schedule-free", "gns",
                              "matched-gns")
  assert fixed.run("rt_sentiment", "gns", 0).config().warmup_steps == 20
  assert budgets.knows_horizon("cosine", {"warmup_steps": 20})
  assert not budgets.knows_horizon("matched-gns", {})  # a control follows its rule's runs

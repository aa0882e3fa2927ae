"""Per-leaf stationarity statistics of fixed Adam, logged through the suite's own loop.

`stationarity`'s statistic is a sum over the params, delta = -sum over leaves of <x + u/2, u>
(gradvar_optax/_stationarity.py `_delta`). Under stationarity of the iterates E[delta_S] = 0 holds
for any subset S of the coordinates, so the test may read only some leaves. This script records,
for every step, each leaf's term -<x + u/2, u> (float32, as `_delta` computes it) of fixed Adam at
the pilot's settings, so that `replay.py` can run the library's test on any subset offline.

It registers a strategy `leaves` from outside train/strategies.py (as tests/test_add_a_rule.py
does): Adam at the suite's LR, its updates untouched (the trajectory is `fixed`'s), wrapped in a
transform whose state holds the latest step's per-leaf terms; the readouts `leaf00` ... `leaf47`
(one per leaf in `jax.tree.leaves` order, 0 past the last) log them in every step row
(`log_every` 1). The runs go through `python -m benchmarks compare` with this file as the
trainer's entry point, so data, model, batches and evaluation are exactly the suite's.

Usage, from the repository root (one run at a time):

    PYTHONPATH=. python benchmarks/results/stationarity-pilot/leaves.py compare \
      --tasks rt_sentiment --only-seeds 0

writes benchmarks/results/stationarity-pilot/leaves/runs/<task>/leaves/lr0.001/seed<n>/ and, next
to each run, `leaf_names.json` (index -> the leaf's path). The other commands, same arguments:
`compare-wd` (`leaves-wd<wd>`: AdamW at WEIGHT_DECAYS, every param decayed; into leaves-wd/),
`compare-mwd` (`leaves-mwd<wd>`: AdamW decaying the params of ndim >= 2; leaves-mwd/),
`compare-rule` (`rule-wd<wd>`: the real rule, `stationarity`'s options, on AdamW; rule-wd/) and
`compare-rule-mwd` (`rule-mwd<wd>`: the rule with `mask` = ndim >= 2 on the masked AdamW;
rule-mwd/).
"""

import json
import os
import pathlib
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUT = HERE / "leaves"
MAX_LEAVES = 48  # the LSTM small has 31 leaves, the ResNet small 38

# The pilot's suite (suite.toml in this folder) with `leaves` in place of `stationarity`.
SUITE = """\
# Per-leaf delta terms of fixed Adam at the stationarity pilot's settings (leaves.py).
name = "stationarity-pilot-leaves"
description = "Per-leaf stationarity statistic of fixed Adam 1e-3 at cpu-v2's settings."
seeds = [0, 1, 2]
strategies = ["leaves"]
baseline = "leaves"
epochs = 4
lr = 1e-3

[defaults]
batch_size = 32
num_devices = 1
log_every = 1
eval_every_steps = 100

[tasks.rt_sentiment]
model_size = "small"
lrs = { leaves = 1e-3 }

[tasks.fashion_mnist]
model_size = "small"
train_examples = 10000
eval_examples = 2000
epochs = 5
data = { augment = false }
lrs = { leaves = 1e-3 }
"""


# The weight-decayed bases: lr * wd = 1e-3 * wd, so x relaxes with time constant 1 / (lr * wd)
# (1,000 steps at wd 1, 333 at wd 3) and |x|^2 with half of it.
WEIGHT_DECAYS = (1.0, 3.0, 10.0)
_WD_NAMES = [f"leaves-wd{wd:g}" for wd in WEIGHT_DECAYS]
SUITE_WD = (SUITE.replace("stationarity-pilot-leaves", "stationarity-pilot-leaves-wd")
            .replace('strategies = ["leaves"]',
                     "strategies = [" + ", ".join(f'"{n}"' for n in _WD_NAMES) + "]")
            .replace('baseline = "leaves"', f'baseline = "{_WD_NAMES[0]}"')
            .replace("lrs = { leaves = 1e-3 }",
                     "lrs = { " + ", ".join(f"{n} = 1e-3" for n in _WD_NAMES) + " }")
            .replace("fixed Adam", "AdamW"))


MASKED_DECAYS = (3.0, 10.0)
_MWD_NAMES = [f"leaves-mwd{wd:g}" for wd in MASKED_DECAYS]
SUITE_MWD = (SUITE.replace("stationarity-pilot-leaves", "stationarity-pilot-leaves-mwd")
             .replace('strategies = ["leaves"]',
                      "strategies = [" + ", ".join(f'"{n}"' for n in _MWD_NAMES) + "]")
             .replace('baseline = "leaves"', f'baseline = "{_MWD_NAMES[0]}"')
             .replace("lrs = { leaves = 1e-3 }",
                      "lrs = { " + ", ".join(f"{n} = 1e-3" for n in _MWD_NAMES) + " }")
             .replace("fixed Adam", "AdamW decaying the params of ndim >= 2"))


def matrices(params):
  """True for the params of 2 or more dimensions (kernels, embeddings)."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


_RMWD_NAMES = [f"rule-mwd{wd:g}" for wd in MASKED_DECAYS]
SUITE_RULE_MWD = (SUITE.replace("stationarity-pilot-leaves", "stationarity-pilot-rule-mwd")
                  .replace('strategies = ["leaves"]',
                           "strategies = [" + ", ".join(f'"{n}"' for n in _RMWD_NAMES) + "]")
                  .replace('baseline = "leaves"', f'baseline = "{_RMWD_NAMES[0]}"')
                  .replace("lrs = { leaves = 1e-3 }",
                           "lrs = { " + ", ".join(f"{n} = 1e-3" for n in _RMWD_NAMES) + " }")
                  .replace("Per-leaf delta terms of fixed Adam",
                           "stationarity's rule, mask ndim >= 2, on AdamW decaying the same")
                  .replace("Per-leaf stationarity statistic of fixed Adam",
                           "stationarity's rule (mask ndim >= 2) on masked AdamW"))

# The real rule (`compare-rule`) on AdamW at these weight decays.
RULE_DECAYS = (3.0, 10.0)
_RULE_NAMES = [f"rule-wd{wd:g}" for wd in RULE_DECAYS]
SUITE_RULE = (SUITE.replace("stationarity-pilot-leaves", "stationarity-pilot-rule-wd")
              .replace('strategies = ["leaves"]',
                       "strategies = [" + ", ".join(f'"{n}"' for n in _RULE_NAMES) + "]")
              .replace('baseline = "leaves"', f'baseline = "{_RULE_NAMES[0]}"')
              .replace("lrs = { leaves = 1e-3 }",
                       "lrs = { " + ", ".join(f"{n} = 1e-3" for n in _RULE_NAMES) + " }")
              .replace("Per-leaf delta terms of fixed Adam",
                       "stationarity's rule on AdamW (no per-leaf terms)")
              .replace("Per-leaf stationarity statistic of fixed Adam",
                       "stationarity's rule on AdamW"))


class LeafDeltaState(NamedTuple):
  terms: jax.Array  # float32 [MAX_LEAVES]: the latest step's -<x + u/2, u> per leaf
  inner_state: Any


def leaf_deltas(base: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """`base`, its updates unchanged, with the per-leaf terms of the statistic in its state."""
  base = optax.with_extra_args_support(base)

  def init(params):
    return LeafDeltaState(jnp.zeros([MAX_LEAVES], jnp.float32), base.init(params))

  def update(updates, state, params=None, **extra):
    inner_updates, inner = base.update(updates, state.inner_state, params, **extra)
    # As reduce_on_stationarity: the barrier keeps Adam's update code the plain optimizer's.
    u_, x_ = jax.lax.optimization_barrier((inner_updates, params))

    def term(u, x):  # `_delta`'s term, negated per leaf
      u = u.astype(jnp.float32)
      return -jnp.sum((x.astype(jnp.float32) + 0.5 * u) * u)

    terms = jax.tree.leaves(jax.tree.map(term, u_, x_))
    if len(terms) > MAX_LEAVES:
      raise ValueError(f"{len(terms)} leaves, more than MAX_LEAVES={MAX_LEAVES}")
    vec = jnp.zeros([MAX_LEAVES], jnp.float32).at[:len(terms)].set(jnp.stack(terms))
    return inner_updates, LeafDeltaState(vec, inner)

  return optax.GradientTransformationExtraArgs(init, update)


def register() -> None:
  from train import controls
  from train import strategies

  def reader(i):
    return lambda state: controls.find_state(state, LeafDeltaState).terms[i]

  readouts = {f"leaf{i:02d}": strategies.Readout(reader(i), at_evals=False)
              for i in range(MAX_LEAVES)}

  @strategies.register("leaves", role="ablation", readouts=readouts)
  def _leaves(args):
    return strategies.Strategy(leaf_deltas(optax.adam(args.lr)),
                               strategies.constant_lr(args.lr))

  # AdamW decaying only the params of 2 or more dimensions (kernels, embeddings: the usual
  # convention, biases and norm scales undecayed) at MASKED_DECAYS.
  for wd in MASKED_DECAYS:
    @strategies.register(f"leaves-mwd{wd:g}", role="ablation", readouts=readouts)
    def _leaves_mwd(args, wd=wd):
      opt = optax.adamw(args.lr, weight_decay=wd, mask=matrices)
      return strategies.Strategy(leaf_deltas(opt), strategies.constant_lr(args.lr))

  # AdamW (optax.adamw: decoupled, every param decayed) at the weight decays of WEIGHT_DECAYS.
  for wd in WEIGHT_DECAYS:
    @strategies.register(f"leaves-wd{wd:g}", role="ablation", readouts=readouts)
    def _leaves_wd(args, wd=wd):
      return strategies.Strategy(leaf_deltas(optax.adamw(args.lr, weight_decay=wd)),
                                 strategies.constant_lr(args.lr))


def register_rule() -> None:
  """`rule-wd<wd>`: the real rule, `stationarity`'s options, on AdamW at each of RULE_DECAYS."""
  import gradvar_optax
  from train import strategies
  for wd in RULE_DECAYS:
    @strategies.register(f"rule-wd{wd:g}", role="ablation",
                         readouts=strategies._STATIONARITY_READOUTS)
    def _rule(args, wd=wd):
      opt = gradvar_optax.reduce_on_stationarity(optax.adamw(args.lr, weight_decay=wd),
                                                 **strategies.STATIONARITY_OPTIONS)
      return strategies.Strategy(opt, strategies._times_gradvar(strategies.constant_lr(args.lr)))


def register_masked_rule() -> None:
  """`rule-mwd<wd>`: the rule with `mask=matrices` on AdamW decaying the same params."""
  import gradvar_optax
  from train import strategies
  for wd in MASKED_DECAYS:
    @strategies.register(f"rule-mwd{wd:g}", role="ablation",
                         readouts=strategies._STATIONARITY_READOUTS)
    def _rule(args, wd=wd):
      opt = gradvar_optax.reduce_on_stationarity(
          optax.adamw(args.lr, weight_decay=wd, mask=matrices), mask=matrices,
          **strategies.STATIONARITY_OPTIONS)
      return strategies.Strategy(opt, strategies._times_gradvar(strategies.constant_lr(args.lr)))


def leaf_names(run: pathlib.Path) -> list[str]:
  """The leaves' paths in `jax.tree.leaves` order, from the run's own model."""
  from train import config as config_lib
  from train import loop
  cfg = json.loads((run / "config.json").read_text())
  config = config_lib.Config(**{k: v for k, v in cfg.items()
                                if k in config_lib.Config.__dataclass_fields__})
  params = loop.setup(config).model_spec.init(jax.random.key(config.seed))["params"]
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def compare(argv, out=OUT, text=SUITE) -> int:
  from benchmarks import __main__ as benchmarks_main
  from benchmarks import runner
  suite = out / "suite.toml"
  out.mkdir(parents=True, exist_ok=True)
  suite.write_text(text)
  runner.command = lambda config_file, resume: [
      sys.executable, str(pathlib.Path(__file__).resolve()), "--config", str(config_file),
      *([f"--resume={resume}"] if resume else [])]
  rc = benchmarks_main.main(["compare", "--suite", str(suite), "--out", str(out),
                             "--no-report", "--no-progress", *argv])
  for run in sorted(out.glob("runs/*/leaves*/*/seed*")):
    if (run / "config.json").exists() and not (run / "leaf_names.json").exists():
      (run / "leaf_names.json").write_text(json.dumps(leaf_names(run), indent=1) + "\n")
  return rc


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  os.chdir(REPO)
  register()
  register_rule()
  register_masked_rule()
  if sys.argv[1:2] == ["compare-rule-mwd"]:
    sys.exit(compare(sys.argv[2:], HERE / "rule-mwd", SUITE_RULE_MWD))
  if sys.argv[1:2] == ["compare-rule"]:
    sys.exit(compare(sys.argv[2:], HERE / "rule-wd", SUITE_RULE))
  if sys.argv[1:2] == ["compare"]:
    sys.exit(compare(sys.argv[2:]))
  if sys.argv[1:2] == ["compare-mwd"]:
    sys.exit(compare(sys.argv[2:], HERE / "leaves-mwd", SUITE_MWD))
  if sys.argv[1:2] == ["compare-wd"]:
    sys.exit(compare(sys.argv[2:], HERE / "leaves-wd", SUITE_WD))
  # The trainer's entry point: `python -m train` with `leaves` registered.
  from train import __main__ as train_main
  sys.exit(train_main.main(sys.argv[1:]))

"""LR strategies: a registry of small functions, each building an Optax optimizer.

A strategy is the AlgoPerf "submission" part of a run: the training loop stays fixed and asks the
strategy for an optimizer and for the effective learning rate it ran at. Adding one is a function
plus the ``@register`` line above it, which declares what the loop and the benchmarks need to know
without building it (`spec(name)`, a `Spec`):

    @register("my-schedule", role="schedule", needs_horizon=True)
    def my_schedule(args):
      sched = optax.exponential_decay(args.lr, args.steps_per_epoch, 0.9)
      return Strategy(optax.adam(sched), lambda before, after, step: sched(step))

An adaptive rule declares its readouts (readings of its optimizer state that every step row
logs, e.g. ``readouts={"lr_scale": LR_SCALE}``), the extra arguments its optimizer's ``update``
takes beyond ``value=`` (the training loss, which every strategy here ignores), and its controls
(``controls=("matched", "replay")``: kinds of `train.control_kinds`, whose strategies the registry
makes). A strategy may also say what the loop does at an evaluation (``observe_eval``, which
``plateau`` uses) and which params it evaluates (``eval_params``, which ``schedule-free`` uses).

Every strategy gets the same `StrategyArgs`: the base LR (the seed's 1e-3), steps per epoch,
epochs, the run's seed and, for the replay controls, the recorded run to replay. The controls are
not tuned: the comparison runner runs them at the LR their rule was tuned to, or at one read from
the rule's run (`train.control_kinds`).
"""

import jax
import jax.numpy as jnp
import optax

import gradvar_optax
from train import controls
from train.strategy_registry import _REGISTRY as _REGISTRY
from train.strategy_registry import _SPECS as _SPECS
from train.strategy_registry import LR_SCALE as LR_SCALE
from train.strategy_registry import NOISE_TO_SIGNAL as NOISE_TO_SIGNAL
from train.strategy_registry import ROLES as ROLES
from train.strategy_registry import VARIABILITY as VARIABILITY
from train.strategy_registry import EffectiveLR as EffectiveLR
from train.strategy_registry import Readout as Readout
from train.strategy_registry import Spec as Spec
from train.strategy_registry import Strategy as Strategy
from train.strategy_registry import StrategyArgs as StrategyArgs
from train.strategy_registry import build as build
from train.strategy_registry import constant_lr as constant_lr
from train.strategy_registry import control_of as control_of
from train.strategy_registry import names as names
from train.strategy_registry import register as register
from train.strategy_registry import scheduled_lr as scheduled_lr
from train.strategy_registry import spec as spec

_GRADVAR_READOUTS = {"lr_scale": LR_SCALE, "variability": VARIABILITY}


def _warmup_steps(steps_per_epoch, epochs):
  # One epoch of warmup, but never more than a tenth of the run.
  return max(1, min(steps_per_epoch, (steps_per_epoch * epochs) // 10))


def _fixed_or_default_warmup(args):
  # `config.warmup_steps` where given (the same at every run length), else `_warmup_steps`.
  if args.warmup_steps is not None:
    return args.warmup_steps
  return _warmup_steps(args.steps_per_epoch, args.epochs)


def _warmup_cosine(lr, steps_per_epoch, epochs):
  total = steps_per_epoch * epochs
  warmup = _warmup_steps(steps_per_epoch, epochs)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), 0.0)


_constant, _scheduled = constant_lr, scheduled_lr


def _times_gradvar(base_lr: EffectiveLR) -> EffectiveLR:
  return lambda before, after, step: (base_lr(before, after, step)
                                      * gradvar_optax.lr_scale(after))


@register("fixed", role="baseline")
def fixed(args):
  """Adam at a constant LR: the seed's baseline."""
  return Strategy(optax.adam(args.lr), _constant(args.lr))


@register("step", role="schedule", needs_horizon=True)
def step_decay(args):
  """Step decay: x0.1 at 50% and again at 75% of the run (epochs 10 and 15 of 20)."""
  total = args.steps_per_epoch * args.epochs
  schedule = optax.piecewise_constant_schedule(
      args.lr, {max(1, total // 2): 0.1, max(2, (3 * total) // 4): 0.1}
  )
  return Strategy(optax.adam(schedule), _scheduled(schedule))


@register("cosine", role="schedule", needs_horizon=True)
def cosine(args):
  """Linear warmup (one epoch, at most 10% of the run), then cosine decay to 0."""
  schedule = _warmup_cosine(args.lr, args.steps_per_epoch, args.epochs)
  return Strategy(optax.adam(schedule), _scheduled(schedule))


def _plateau_scale(state) -> jax.Array:
  """The plateau's LR scale. The name "scale" alone would also match the Adam moments of any
  parameter named "scale" (LayerNorm, BatchNorm), so the lookup keeps only the plateau state's."""
  return optax.tree_utils.tree_get(
      state, "scale",
      filtering=lambda path, _: getattr(path[-1], "tuple_name", None) == "ReduceLROnPlateauState")


@register("plateau", role="schedule")
def plateau(args):
  """Adam, halved after 2 evaluations without a 1e-4 relative improvement of the validation loss.

  This is how `reduce_on_plateau` is used: on the validation loss, once per evaluation (Keras's
  and PyTorch's ReduceLROnPlateau are documented that way). AlgoPerf allows it too: a
  submission's `update_params` receives `eval_results`, so a rule that reacts to the validation
  loss at the evaluations the workload makes is within its rules; the evaluation set is not the
  held-out test set. Fed the training loss instead, as the seed's comparison did, it never fires
  while the training loss keeps falling, and equals `fixed`.

  So the train step's ``value=`` leaves the state alone; `observe_eval(opt_state, val_loss)`,
  which the loop applies after each evaluation, is the plateau update (`accumulation_size` 1),
  and `patience` counts evaluations: epochs, or `eval_every_steps` evaluations where that is set,
  so that field changes this strategy's trajectory. A halving applies from the step after the
  evaluation; the scale never goes below 1e-3.
  """
  split = controls.plateau_on_eval(factor=0.5, patience=2, rtol=1e-4, min_scale=1e-3)
  opt = optax.chain(optax.adam(args.lr), split.transformation)
  lr = args.lr
  return Strategy(opt, lambda before, after, step: lr * _plateau_scale(after),
                  observe_eval=split.observe_eval)


@register("gradvar", role="adaptive", controls=("null", "matched", "replay"),
          readouts=_GRADVAR_READOUTS)
def gradvar(args):
  """The seed's technique with its defaults (window 5, factor 0.1), wrapping Adam."""
  return Strategy(gradvar_optax.gradvar(optax.adam(args.lr)), _times_gradvar(_constant(args.lr)))


@register("gradvar-cosine", role="ablation", needs_horizon=True, readouts=_GRADVAR_READOUTS)
def gradvar_cosine(args):
  """gradvar wrapping Adam on the warmup+cosine schedule of ``cosine``."""
  schedule = _warmup_cosine(args.lr, args.steps_per_epoch, args.epochs)
  return Strategy(
      gradvar_optax.gradvar(optax.adam(schedule)), _times_gradvar(_scheduled(schedule))
  )


@register("gradvar-smooth", role="ablation", readouts=_GRADVAR_READOUTS)
def gradvar_smooth(args):
  """gradvar comparing each window with a slow moving average (0.9) of past variabilities."""
  return Strategy(
      gradvar_optax.gradvar(optax.adam(args.lr), smoothing=0.9), _times_gradvar(_constant(args.lr))
  )


@register("gradvar-deadband", role="ablation", readouts=_GRADVAR_READOUTS)
def gradvar_deadband(args):
  """gradvar that ignores changes of the variability smaller than 10%."""
  return Strategy(
      gradvar_optax.gradvar(optax.adam(args.lr), tolerance=0.1), _times_gradvar(_constant(args.lr))
  )


@register("gradvar-window20", role="ablation", readouts=_GRADVAR_READOUTS)
def gradvar_window20(args):
  """Ablation: gradvar measuring the variability over the last 20 batches instead of 5."""
  return Strategy(gradvar_optax.gradvar(optax.adam(args.lr), window=20),
                  _times_gradvar(_constant(args.lr)))


@register("gradvar-factor0.05", role="ablation", readouts=_GRADVAR_READOUTS)
def gradvar_factor005(args):
  """Ablation: gradvar with the gentler factor 0.05 (x0.95 on a rise, x1.05 on a fall)."""
  return Strategy(gradvar_optax.gradvar(optax.adam(args.lr), factor=0.05),
                  _times_gradvar(_constant(args.lr)))


@register("gradvar-before-adam", role="ablation", readouts=_GRADVAR_READOUTS)
def gradvar_before_adam(args):
  """Ablation: the factor placed before Adam, ``chain(scale_by_gradvar(), adam)``.

  Adam cancels a constant factor on its input, so its effective LR is not ``lr * lr_scale``; the
  recorded value is the base LR, and the scale is recorded on its own.
  """
  opt = optax.chain(gradvar_optax.scale_by_gradvar(), optax.adam(args.lr))
  return Strategy(opt, _constant(args.lr))


@register("prodigy", role="reference")
def prodigy(args):
  """LR-free reference: Prodigy (``optax.contrib.prodigy``); ``args.lr`` is its ``estim_lr_coef``.

  Prodigy has no LR to tune, so the runner tunes the coefficient its distance estimate is
  multiplied by (optax's ``estim_lr_coef``, 1 by default) on the same grid as the others' LRs.
  Its step is Adam's with the learning rate ``d``, its running estimate of the distance to the
  solution (the coefficient included). The update steps with the ``d`` it starts from and then
  raises it, so the ``d`` (``estim_lr``) of the state *before* the update is recorded as the
  effective LR.
  """
  return Strategy(
      optax.contrib.prodigy(estim_lr_coef=args.lr),
      lambda before, after, step: optax.tree_utils.tree_get(before, "estim_lr"),
  )


# --- reference arms ------------------------------------------------------------------------------


@register("schedule-free", role="reference", needs_horizon=True, fixed_warmup=True)
def schedule_free(args):
  """Schedule-Free AdamW (``optax.contrib.schedule_free_adamw``), with ``cosine``'s warmup.

  The winner of AlgoPerf 2024's self-tuning track: no decay schedule, only the linear warmup
  (the same length as ``cosine``'s, or ``config.warmup_steps`` where given), after which the LR
  stays at ``args.lr``. Its authors suggest 1-10x a scheduled AdamW's LR; the runner tunes it
  like the others.

  The trained params ``y`` are an interpolation of a fast sequence ``z`` (AdamW without momentum,
  steps of size ``lr``) and its weighted average ``x``; the evaluated and saved params are ``x``
  (``eval_params``: ``optax.contrib.schedule_free_eval_params``). The effective LR recorded is
  the LR of ``z``'s step at that update, i.e. the warmup schedule at the 0-based step; ``y``
  and ``x`` move by less (by the interpolation and averaging weights).
  """
  schedule = optax.warmup_constant_schedule(0.0, args.lr, _fixed_or_default_warmup(args))
  opt = optax.contrib.schedule_free_adamw(learning_rate=schedule)
  return Strategy(opt, _scheduled(schedule), eval_params=controls.schedule_free_eval_params)


@register("mechanic", role="reference")
def mechanic(args):
  """Mechanic (``optax.contrib.mechanize``) around Adam at ``args.lr``: a learned LR scale.

  Mechanic sets the params to ``x0 + s * sum of Adam's updates``, where ``s`` (the sum of its
  ``MechanicState.s`` over its betas) is learned online from the start ``s_init`` (6 x 1e-6).
  The effective LR recorded is ``args.lr * s`` of the state after the update, the scale that
  update set and applied.
  """
  lr = args.lr
  return Strategy(
      optax.contrib.mechanize(optax.adam(lr)),
      lambda before, after, step: lr * jnp.sum(
          controls.find_state(after, optax.contrib.MechanicState).s).astype(jnp.float32),
  )


# --- controls: gradvar's moves without its signal, and its LR without its timing ----------------


@register("gradvar-null", role="control", control=("null", "gradvar"), readouts=_GRADVAR_READOUTS)
def gradvar_null(args):
  """The control of ``gradvar``: the same cadence, bounds and x0.9/x1.1 moves, decided by coins.

  Each decision from the second window on is a fair coin from ``fold_in(key(seed), decision)``
  (`controls.gradvar_null`): the drift and spread of a signal that carries no information. It
  runs at gradvar's tuned LR; its scale is recorded as ``lr_scale``, like gradvar's.
  """
  return Strategy(controls.gradvar_null(optax.adam(args.lr), seed=args.seed),
                  _times_gradvar(_constant(args.lr)))


@register("gns", role="adaptive", needs_horizon=True, controls=("matched", "replay"),
          readouts={"lr_scale": LR_SCALE, "noise_to_signal": NOISE_TO_SIGNAL},
          update_args=("group_sq_norm", "num_groups"), uses_groups=True, fixed_warmup=True)
def gns(args):
  """Adam scaled by the gradient noise scale (``gradvar_optax.gns``), over ``gns_groups`` groups.

  The step feeds it the groups of the global batch (``config.gns_groups``: replicas x
  microbatches). Its warmup is ``cosine``'s, one epoch and at most a tenth of the run, or
  ``config.warmup_steps`` where given: the reference signal fraction is frozen then, and the
  scale moves from there on.

  With ``config.gns_every`` k > 1 the step computes the groups on every k-th step only, and
  ``gns`` observes those steps alone. Its warmup is ``ceil(warmup / k)`` observations, the same
  span of steps; its averages keep their decay of 0.99 an observation, so they hold as many
  observations as with k = 1 (the same variance) over k times as many steps (k times the lag).
  The decay ``0.99 ** k``, the same span of steps from k times fewer observations, left the
  smoothed signal negative (the scale at its floor of 0.01) for 548 of the last 600 steps of one
  of 3 rt_sentiment runs at k = 4 (benchmarks/results/gns_sequential/README.md).
  """
  warmup = -(-_fixed_or_default_warmup(args) // args.group_every)
  return Strategy(gradvar_optax.gns(optax.adam(args.lr), warmup_steps=warmup),
                  _times_gradvar(_constant(args.lr)))


# --- a statistical drop: the seed's x0.1 when the iterates stop travelling -----------------------

_TEST = lambda field: Readout(lambda state: getattr(gradvar_optax.stationarity_test(state), field),
                              at_evals=False)
_STATIONARITY_READOUTS = {
    "lr_scale": LR_SCALE,
    "drops": Readout(gradvar_optax.stationarity_drops),
    # The latest test (all 0 before the first): its step and the bucket's mean with its interval.
    "test_step": _TEST("step"), "test_mean": _TEST("mean"),
    "test_lower": _TEST("lower"), "test_upper": _TEST("upper"),
}
# The suite's runs are 124 (wordnet_topics) to 1,560 (fashion_mnist) steps: see `stationarity`.
STATIONARITY_OPTIONS = {"factor": 0.1, "test_every": 50, "min_samples": 25}


@register("stationarity", role="adaptive", controls=("replay",), readouts=_STATIONARITY_READOUTS)
def stationarity(args):
  """Adam whose LR drops x0.1 when a test finds the iterates stationary (SASA+'s test).

  ``gradvar_optax.reduce_on_stationarity(optax.adam(lr), factor=0.1, test_every=50,
  min_samples=25)``: the seed's factor, and the bucket sized to the suite's runs. The bucket keeps
  the newest 1/8 of the samples since the last drop, so a test needs ``8 x min_samples`` steps
  since it: 200 with ``min_samples=25`` (``statopt``'s floor of 100 would mean step 800 at the
  earliest, 62% of an rt_sentiment run of 1,284 steps). A test every 50 steps then tests first at
  step 200: 16% of rt_sentiment's 1,284 steps and 13% of fashion_mnist's 1,560, and again every
  50 steps, so a drop comes within 50 steps of the test turning (a test costs one batch-means
  interval; the statistic is computed every step). 25 samples make 5 batches of 5 (4 degrees of
  freedom). wordnet_topics' 124 steps see no test: there it is fixed Adam. No horizon is needed:
  the same options serve any run length, which is the rule's point.

  Its readouts are the scale, the drops and the latest test (its step, the bucket's mean and the
  interval's ends), logged with every step row.
  """
  opt = gradvar_optax.reduce_on_stationarity(optax.adam(args.lr), **STATIONARITY_OPTIONS)
  return Strategy(opt, _times_gradvar(_constant(args.lr)))

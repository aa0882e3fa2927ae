"""LR strategies: a registry of small functions, each building an Optax optimizer.

A strategy is the AlgoPerf "submission" part of a run: the training loop stays fixed and asks the
strategy for an optimizer and for the effective learning rate it ran at. Adding one is a function
plus the ``@register`` line above it:

    @register("my-schedule")
    def my_schedule(lr, steps_per_epoch, epochs):
      sched = optax.exponential_decay(lr, steps_per_epoch, 0.9)
      return Strategy(optax.adam(sched), lambda before, after, step: sched(step))

Every strategy gets the same base LR (the seed's 1e-3), steps per epoch and epochs. The optimizer's
``update`` may take ``value=`` (the training loss), which ``plateau`` uses and the others ignore.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

import gradvar_optax

# (opt_state before the update, opt_state after it, 0-based step) -> the learning rate that update
# ran at; jit-compatible. A factor the update computes and applies (gradvar's scale, plateau's) is
# in the state after it; an estimate the update only reads (Prodigy's d) is in the state before.
EffectiveLR = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Strategy:
  optimizer: optax.GradientTransformationExtraArgs
  effective_lr: EffectiveLR
  # The step splits each device's batch into microbatches, so that the update sees
  # `config.gns_groups` groups over the global batch (`group_sq_norm`, `num_groups`); gns reads them.
  uses_groups: bool = False


_REGISTRY: dict[str, Callable[[float, int, int], Strategy]] = {}


def register(name: str):
  def wrap(fn):
    if name in _REGISTRY:
      raise ValueError(f"strategy {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn

  return wrap


def names() -> list[str]:
  return sorted(_REGISTRY)


def build(name: str, lr: float, steps_per_epoch: int, epochs: int) -> Strategy:
  """Builds the named strategy; an unknown name gets an error that lists the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(names())}")
  strategy = _REGISTRY[name](lr, steps_per_epoch, epochs)
  return dataclasses.replace(
      strategy, optimizer=optax.with_extra_args_support(strategy.optimizer)
  )


def _warmup_cosine(lr, steps_per_epoch, epochs):
  total = steps_per_epoch * epochs
  # One epoch of warmup, but never more than a tenth of the run.
  warmup = max(1, min(steps_per_epoch, total // 10))
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total, warmup + 1), 0.0)


def _constant(lr):
  return lambda before, after, step: jnp.asarray(lr, jnp.float32)


def _scheduled(schedule):
  return lambda before, after, step: jnp.asarray(schedule(step), jnp.float32)


def _times_gradvar(base_lr: EffectiveLR) -> EffectiveLR:
  return lambda before, after, step: (base_lr(before, after, step)
                                      * gradvar_optax.lr_scale(after))


@register("fixed")
def fixed(lr, steps_per_epoch, epochs):
  """Adam at a constant LR: the seed's baseline."""
  return Strategy(optax.adam(lr), _constant(lr))


@register("step")
def step_decay(lr, steps_per_epoch, epochs):
  """Step decay: x0.1 at 50% and again at 75% of the run (epochs 10 and 15 of 20)."""
  total = steps_per_epoch * epochs
  schedule = optax.piecewise_constant_schedule(
      lr, {max(1, total // 2): 0.1, max(2, (3 * total) // 4): 0.1}
  )
  return Strategy(optax.adam(schedule), _scheduled(schedule))


@register("cosine")
def cosine(lr, steps_per_epoch, epochs):
  """Linear warmup (one epoch, at most 10% of the run), then cosine decay to 0."""
  schedule = _warmup_cosine(lr, steps_per_epoch, epochs)
  return Strategy(optax.adam(schedule), _scheduled(schedule))


def _plateau_scale(state) -> jax.Array:
  """The plateau's LR scale. The name "scale" alone would also match the Adam moments of any
  parameter named "scale" (LayerNorm, BatchNorm), so the lookup keeps only the plateau state's."""
  return optax.tree_utils.tree_get(
      state, "scale",
      filtering=lambda path, _: getattr(path[-1], "tuple_name", None) == "ReduceLROnPlateauState")


@register("plateau")
def plateau(lr, steps_per_epoch, epochs):
  """Adam, halved after 2 epochs without a 1e-4 relative improvement of the training loss.

  It is fed the training loss of every batch (the step passes ``value=loss``), averaged over an
  epoch (``accumulation_size`` = steps per epoch), so patience counts epochs. Feeding it the
  validation loss would leak evaluation into training; the mean epoch loss is what it can see.
  """
  opt = optax.chain(
      optax.adam(lr),
      optax.contrib.reduce_on_plateau(
          factor=0.5, patience=2, rtol=1e-4, accumulation_size=steps_per_epoch, min_scale=1e-3
      ),
  )
  return Strategy(opt, lambda before, after, step: lr * _plateau_scale(after))


@register("gradvar")
def gradvar(lr, steps_per_epoch, epochs):
  """The seed's technique with its defaults (window 5, factor 0.1), wrapping Adam."""
  return Strategy(gradvar_optax.gradvar(optax.adam(lr)), _times_gradvar(_constant(lr)))


@register("gradvar-cosine")
def gradvar_cosine(lr, steps_per_epoch, epochs):
  """gradvar wrapping Adam on the warmup+cosine schedule of ``cosine``."""
  schedule = _warmup_cosine(lr, steps_per_epoch, epochs)
  return Strategy(
      gradvar_optax.gradvar(optax.adam(schedule)), _times_gradvar(_scheduled(schedule))
  )


@register("gradvar-smooth")
def gradvar_smooth(lr, steps_per_epoch, epochs):
  """gradvar comparing each window with a slow moving average (0.9) of past variabilities."""
  return Strategy(
      gradvar_optax.gradvar(optax.adam(lr), smoothing=0.9), _times_gradvar(_constant(lr))
  )


@register("gradvar-deadband")
def gradvar_deadband(lr, steps_per_epoch, epochs):
  """gradvar that ignores changes of the variability smaller than 10%."""
  return Strategy(
      gradvar_optax.gradvar(optax.adam(lr), tolerance=0.1), _times_gradvar(_constant(lr))
  )


@register("gradvar-window20")
def gradvar_window20(lr, steps_per_epoch, epochs):
  """Ablation: gradvar measuring the variability over the last 20 batches instead of 5."""
  return Strategy(gradvar_optax.gradvar(optax.adam(lr), window=20), _times_gradvar(_constant(lr)))


@register("gradvar-factor0.05")
def gradvar_factor005(lr, steps_per_epoch, epochs):
  """Ablation: gradvar with the gentler factor 0.05 (x0.95 on a rise, x1.05 on a fall)."""
  return Strategy(gradvar_optax.gradvar(optax.adam(lr), factor=0.05),
                  _times_gradvar(_constant(lr)))


@register("gradvar-before-adam")
def gradvar_before_adam(lr, steps_per_epoch, epochs):
  """Ablation: the factor placed before Adam, ``chain(scale_by_gradvar(), adam)``.

  Adam cancels a constant factor on its input, so its effective LR is not ``lr * lr_scale``; the
  recorded value is the base LR, and the scale is recorded on its own.
  """
  opt = optax.chain(gradvar_optax.scale_by_gradvar(), optax.adam(lr))
  return Strategy(opt, _constant(lr))


@register("prodigy")
def prodigy(lr, steps_per_epoch, epochs):
  """LR-free reference: Prodigy (``optax.contrib.prodigy``), which ignores the base LR.

  Its step is Adam's with the learning rate ``d``, its running estimate of the distance to the
  solution. The update steps with the ``d`` it starts from and then raises it, so the ``d``
  (``estim_lr``) of the state *before* the update is recorded as the effective LR.
  """
  del lr
  return Strategy(
      optax.contrib.prodigy(),
      lambda before, after, step: optax.tree_utils.tree_get(before, "estim_lr"),
  )


@register("gns")
def gns(lr, steps_per_epoch, epochs):
  """Adam scaled by the gradient noise scale (``gradvar_optax.gns``), over ``gns_groups`` groups.

  The step feeds it the groups of the global batch (``config.gns_groups``: replicas x
  microbatches). Its warmup is ``cosine``'s, one epoch and at most a tenth of the run: the
  reference signal fraction is frozen then, and the scale moves from there on.
  """
  total = steps_per_epoch * epochs
  warmup = max(1, min(steps_per_epoch, total // 10))
  return Strategy(gradvar_optax.gns(optax.adam(lr), warmup_steps=warmup),
                  _times_gradvar(_constant(lr)), uses_groups=True)

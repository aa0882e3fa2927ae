"""The strategy registry: what a strategy is (`Spec`), what it builds (`Strategy`), and `register`.

`train.strategies` holds the strategies themselves and re-exports every name here; see its
docstring for how to add one.
"""

from collections.abc import Callable, Mapping
import dataclasses
import types
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

import gradvar_optax
from train import control_kinds
from train import records

# (opt_state before the update, opt_state after it, 0-based step) -> the learning rate that update
# ran at; jit-compatible. A factor the update computes and applies (gradvar's scale, plateau's) is
# in the state after it; an estimate the update only reads (Prodigy's d) is in the state before.
EffectiveLR = Callable[[Any, jax.Array], jax.Array]


ROLES = ("baseline", "schedule", "reference", "adaptive", "ablation", "control")


@dataclasses.dataclass(frozen=True)
class Readout:
  """A reading of an optimizer state that every step row logs (`records.StepRow.readouts`).

  Attributes:
    read: `opt_state -> scalar`, jit-compatible; it must find what it reads in the state.
    at_evals: also in each evaluation's row (evals.jsonl), with the step's value.
  """
  read: Callable[[Any], jax.Array]
  at_evals: bool = True


LR_SCALE = Readout(gradvar_optax.lr_scale)
# gradvar's variability moves only at its decisions; its step rows and epoch means say enough.
VARIABILITY = Readout(gradvar_optax.variability, at_evals=False)
NOISE_TO_SIGNAL = Readout(gradvar_optax.noise_to_signal)


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a strategy is, readable without building it (`spec(name)`).

  Attributes:
    name: the registered name.
    role: one of `ROLES`: the suite's `baseline` (Adam at a fixed LR), a `schedule` that a
      person sets, a `reference` (self-tuning) arm, an `adaptive` rule, an `ablation` or variant
      of one, or a `control` of one.
    needs_horizon: its trajectory depends on the run's length (`epochs`).
    controls: the control kinds (`train.control_kinds`) an adaptive rule has.
    control: for a control, (its kind, its rule).
    readouts: name -> `Readout`, logged at every step.
    update_args: the extra arguments its optimizer's ``update`` takes beyond ``value=``, which
      the train step passes (``group_sq_norm``, ``num_groups``).
    uses_groups: the step splits each device's batch into microbatches, so that the update sees
      `config.gns_groups` groups over the global batch (`group_sq_norm`, `num_groups`); BatchNorm
      then normalises each group over its own examples (`step.model_axis_name`).
    batchnorm_groups: a control of a rule that `uses_groups`: on a model with BatchNorm, the step
      normalises over the rule's groups as the rule's does, with one gradient of their mean
      loss, so that the control differs from its rule in the LR alone. Without BatchNorm the
      plain step is already that computation, and the loop keeps it.
    fixed_warmup: it takes `config.warmup_steps` (`StrategyArgs.warmup_steps`), a warmup of a
      fixed number of steps; with one, a strategy whose `needs_horizon` came from its warmup alone
      no longer depends on the run's length (`benchmarks.budgets.knows_horizon`).
  """
  name: str
  role: str
  needs_horizon: bool = False
  controls: tuple[str, ...] = ()
  control: Optional[tuple[str, str]] = None
  readouts: Mapping[str, Readout] = dataclasses.field(
      default_factory=lambda: types.MappingProxyType({}))
  update_args: tuple[str, ...] = ()
  uses_groups: bool = False
  batchnorm_groups: bool = False
  fixed_warmup: bool = False

  def eval_readouts(self) -> tuple[str, ...]:
    return tuple(k for k, r in self.readouts.items() if r.at_evals)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """An optimizer, the LR it ran at, and what it does at evaluations.

  Attributes:
    optimizer: the Optax optimizer.
    effective_lr: see `EffectiveLR`.
    observe_eval: `(opt_state, val_loss) -> opt_state`, pure and jit-able: the loop applies it
      after each evaluation the strategy sees (None: evaluations do not change the state).
    eval_params: `(opt_state, params) -> params`: the params to evaluate and to save as final
      (None: the trained params themselves).
    spec: its registration (`build` sets it).
  """

  optimizer: optax.GradientTransformationExtraArgs
  effective_lr: EffectiveLR
  observe_eval: Optional[Callable[[Any, jax.Array], Any]] = None
  eval_params: Optional[Callable[[Any, Any], Any]] = None
  spec: Optional[Spec] = None

  @property
  def uses_groups(self) -> bool:
    return self.spec is not None and self.spec.uses_groups

  @property
  def batchnorm_groups(self) -> bool:
    return self.spec is not None and self.spec.batchnorm_groups


@dataclasses.dataclass(frozen=True)
class StrategyArgs:
  """What every strategy is built from.

  Attributes:
    lr: the base LR (for `prodigy`, its `estim_lr_coef`).
    steps_per_epoch: optimizer steps per epoch.
    epochs: epochs of the run.
    seed: the run's seed (`gradvar-null`'s coins).
    replay_from: the folder of the recorded run that `replay-X` replays (None for the others).
    warmup_steps: `config.warmup_steps`, a fixed warmup for the strategies with `fixed_warmup`
      (None: their default, which depends on the run's length).
    group_every: `config.gns_every`: the step computes the groups on every k-th step only.
  """

  lr: float
  steps_per_epoch: int
  epochs: int
  seed: int
  replay_from: Optional[str]
  warmup_steps: Optional[int] = None
  group_every: int = 1


_REGISTRY: dict[str, Callable[[StrategyArgs], Strategy]] = {}
_SPECS: dict[str, Spec] = {}
# What a step row holds besides its readouts: a readout may not take these names.
_RESERVED = frozenset(records.STEP_METRICS)


def register(name: str, *, role: str, needs_horizon: bool = False,
             controls: tuple[str, ...] = (), control: Optional[tuple[str, str]] = None,
             readouts: Optional[Mapping[str, Readout]] = None, update_args: tuple[str, ...] = (),
             uses_groups: bool = False, batchnorm_groups: bool = False,
             fixed_warmup: bool = False):
  """Registers a strategy builder under `name` with its `Spec` (see there for the arguments).

  An adaptive rule's `controls` are registered with it: each kind's strategy, named by the kind
  (`ControlKind.name_of`), unless the kind leaves it to the rule (its `build` is None: then the
  rule registers it with ``control=(kind, rule)``).
  """
  if name in _REGISTRY:
    raise ValueError(f"strategy {name!r} is registered twice")
  if role not in ROLES:
    raise ValueError(f"register({name!r}): role must be one of {ROLES}, got {role!r}")
  if (role == "control") != (control is not None):
    raise ValueError(f"register({name!r}): a control, and only a control, names its "
                     "control=(kind, rule)")
  if control is not None and control_kinds.get(control[0]).name_of(control[1]) != name:
    raise ValueError(f"register({name!r}): a {control[0]} control of {control[1]!r} is named "
                     f"{control_kinds.get(control[0]).name_of(control[1])!r}")
  readouts = dict(readouts or {})
  clash = sorted(set(readouts) & _RESERVED)
  if clash:
    raise ValueError(f"register({name!r}): readouts may not be named {', '.join(clash)}")
  for kind in controls:
    control_kinds.get(kind)  # known
  spec = Spec(name, role, needs_horizon, tuple(controls), control,
              types.MappingProxyType(readouts), tuple(update_args), uses_groups,
              batchnorm_groups, fixed_warmup)

  def wrap(fn):
    _REGISTRY[name] = fn
    _SPECS[name] = spec
    for kind_name in controls:
      kind = control_kinds.get(kind_name)
      if kind.build is not None:
        register(kind.name_of(name), role="control", control=(kind.name, name),
                 needs_horizon=kind.needs_horizon, batchnorm_groups=uses_groups)(
                     kind.build(name))
    return fn

  return wrap


def names(*roles: str) -> list[str]:
  """The registered strategies (those of `roles`, when given), sorted."""
  return sorted(n for n in _REGISTRY if not roles or spec(n).role in roles)


def spec(name: str) -> Spec:
  """A strategy's `Spec`, without building it; an unknown name lists the known ones.

  A builder put in the registry without `register` (tests stand fixed in for a control that
  way) has a plain spec: a schedule without readouts.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(names())}")
  return _SPECS.get(name) or Spec(name, "schedule")


def control_of(name: str) -> Optional[tuple[str, str]]:
  """(kind, rule) for a control strategy, else None (unknown names too)."""
  if name not in _REGISTRY:
    return None
  return spec(name).control


def build(name: str, args: StrategyArgs) -> Strategy:
  """Builds the named strategy; an unknown name gets an error that lists the known ones."""
  the_spec = spec(name)
  strategy = _REGISTRY[name](args)
  return dataclasses.replace(
      strategy, optimizer=optax.with_extra_args_support(strategy.optimizer), spec=the_spec)


def constant_lr(lr) -> EffectiveLR:
  """The effective LR of a constant LR."""
  return lambda before, after, step: jnp.asarray(lr, jnp.float32)


def scheduled_lr(schedule) -> EffectiveLR:
  """The effective LR of an LR schedule of the 0-based step."""
  return lambda before, after, step: jnp.asarray(schedule(step), jnp.float32)

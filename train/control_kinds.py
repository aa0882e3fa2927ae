"""The kinds of control a rule can have, each declared once: its name, its strategy and its runs.

A control is a strategy that runs at its rule's tuned LR (or from its rule's runs) to say what a
rule's result owes to what. Each kind declares, in one `ControlKind`:

- how its strategy's name is made from the rule's (`name_of`), and its strategy (`build`, from
  the rule's name; None where the rule registers its own, as gradvar does its null);
- what the comparison runner needs (`plan`): the control's LR (the rule's tuned LR, or one read
  from the rule's run), the config options (`replay_from`), which seed's run of the rule it
  follows (`source_seed`) and what its `control.json` records;
- whether it needs a finished run of its rule first (`follows_source_run`), and how many of the
  rule's seeds (`min_source_seeds`);
- a sentence for the report, and its rank among a rule's controls in the main plot panel.

A rule lists the kinds it has (`strategies.register(..., controls=(...))`) and the registry
makes each control strategy; the benchmarks ask this registry and name no kind.

    register(ControlKind(name="half", name_of=lambda x: f"half-{x}", build=..., plan=...,
                         description="`half-X` is fixed Adam at half X's tuned LR"))
"""

from collections.abc import Callable, Sequence
import dataclasses
import json
import math
import os
import pathlib
import statistics
from typing import Any, Optional

import optax

from train import records


@dataclasses.dataclass(frozen=True)
class Source:
  """The rule's run a control is planned from, as the runner finds it.

  Attributes:
    strategy: the rule (X).
    base_lr: the rule's tuned LR (the LR of its runs).
    seed: the seed of the rule's run that the control follows (`ControlKind.source_seed`).
    folder: that run's folder (finished where the kind `follows_source_run`).
    relpath: the folder relative to the comparison's output folder, as control.json records it.
    root: the folder that `replay_from`-like options are written relative to (the repository).
  """
  strategy: str
  base_lr: float
  seed: int
  folder: pathlib.Path
  relpath: pathlib.Path
  root: pathlib.Path


@dataclasses.dataclass(frozen=True)
class Plan:
  """A control run: its LR, its config options and its control.json beyond {control, of}."""
  lr: float
  options: tuple[tuple[str, Any], ...] = ()
  info: tuple[tuple[str, Any], ...] = ()


def same_seed(seeds: Sequence[int], seed: int) -> int:
  del seeds
  return seed


@dataclasses.dataclass(frozen=True)
class ControlKind:
  """One kind of control (see the module docstring).

  Attributes:
    name: the kind's name ("null", "matched", "replay").
    name_of: rule -> the control strategy's name.
    plan: `Source` -> `Plan`.
    description: one sentence for the report, naming the control as `name_of("X")` does.
    build: rule -> the control's strategy builder (`strategies.StrategyArgs -> Strategy`), or
      None where the rule registers the control itself.
    follows_source_run: the control needs the rule's finished run first.
    source_seed: (the rule's evaluation seeds, this seed) -> the seed of the run it follows.
    min_source_seeds: the rule's evaluation seeds it needs per task.
    lr_from_source: the LR is read from the rule's run, so the control's folder is named by
      that LR and is found by its control.json.
    needs_horizon: the control's strategy needs the training horizon.
    rank: its order among a rule's controls in the report's main panel (lower first).
    stand_in: `(folder, rule, lr) -> config options` for a run without a real source run (the
      step-cost benchmark); None where the plan needs none.
  """
  name: str
  name_of: Callable[[str], str]
  plan: Callable[[Source], Plan]
  description: str
  build: Optional[Callable[[str], Callable[[Any], Any]]] = None
  follows_source_run: bool = True
  source_seed: Callable[[Sequence[int], int], int] = same_seed
  min_source_seeds: int = 1
  lr_from_source: bool = False
  needs_horizon: bool = False
  rank: int = 100
  stand_in: Optional[Callable[[pathlib.Path, str, float], dict[str, Any]]] = None


_KINDS: dict[str, ControlKind] = {}


def register(kind: ControlKind) -> ControlKind:
  if kind.name in _KINDS:
    raise ValueError(f"control kind {kind.name!r} is registered twice")
  _KINDS[kind.name] = kind
  return kind


def get(name: str) -> ControlKind:
  if name not in _KINDS:
    raise ValueError(f"unknown control kind {name!r}; known: {', '.join(_KINDS)}")
  return _KINDS[name]


def kinds() -> list[ControlKind]:
  """Every kind, in the order of registration."""
  return list(_KINDS.values())


def ranked() -> list[ControlKind]:
  """Every kind, in the main panel's order of preference."""
  return sorted(_KINDS.values(), key=lambda k: k.rank)


def control_json(strategy: str, plan: Plan, source: str) -> dict[str, Any]:
  """What a control run's control.json holds."""
  return {"control": strategy, "of": source, **dict(plan.info)}


# --- null: the rule's moves without its information ---------------------------------------------


def _null_plan(source: Source) -> Plan:
  return Plan(lr=source.base_lr, info=(("source", None), ("lr", source.base_lr)))


# --- matched: fixed Adam at the rule's mean effective LR -----------------------------------------


def matched_lr(epochs: list[records.EpochRow]) -> float:
  """`matched-X`'s LR: the mean over X's epochs of `effective_lr_mean`.

  Every epoch has the same number of steps, so this is the mean effective LR over the run.
  """
  values = [r.effective_lr_mean for r in epochs]
  finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  if not values or not all(finite(v) for v in values):
    raise ValueError(f"matched LR: every epoch needs a finite effective_lr_mean, got {values}")
  return statistics.fmean(values)


def _matched_plan(source: Source) -> Plan:
  lr = matched_lr(records.read_epochs(source.folder / "epochs.jsonl", missing_ok=True))
  return Plan(lr=lr, info=(("source", str(source.relpath)), ("lr", lr),
                           ("base_lr", source.base_lr)))


def _matched_build(of: str):
  def build_matched(args):
    from train import strategies
    return strategies.Strategy(optax.adam(args.lr), strategies.constant_lr(args.lr))

  build_matched.__doc__ = (
      f"Adam at a constant LR: the mean effective LR that ``{of}`` realised on the same task, "
      f"seed and base LR. The runner computes it from {of}'s epochs.jsonl and passes it as "
      "``lr``; with the same mean LR, what is left of a difference is the path's timing.")
  return build_matched


# --- replay: the rule's recorded LR path of another seed, as a schedule --------------------------


def replay_seed(seeds: Sequence[int], seed: int) -> int:
  """The seed whose path `replay-X` on `seed` follows: the next evaluation seed, cyclically."""
  seeds = tuple(seeds)
  if seed not in seeds:
    raise ValueError(f"replay: seed {seed} is not one of the evaluation seeds {list(seeds)}")
  if len(seeds) < 2:
    raise ValueError(f"replay: needs at least 2 evaluation seeds (a run replays another seed's "
                     f"path), got {list(seeds)}")
  return seeds[(seeds.index(seed) + 1) % len(seeds)]


def _replay_plan(source: Source) -> Plan:
  replay_from = os.path.relpath(source.folder, source.root)
  return Plan(lr=source.base_lr, options=(("replay_from", replay_from),),
              info=(("source", str(source.relpath)), ("lr", source.base_lr),
                    ("replay_from", replay_from), ("source_seed", source.seed)))


def _replay_build(of: str):
  def build_replay(args):
    from train import controls
    from train import strategies
    total = args.steps_per_epoch * args.epochs
    schedule = controls.array_schedule(controls.read_path(args.replay_from, total, of))
    return strategies.Strategy(optax.adam(schedule), strategies.scheduled_lr(schedule))

  build_replay.__doc__ = (
      f"Adam following, as a schedule, the effective-LR path that ``{of}`` realised on another "
      f"seed: the steps.jsonl of the run in ``replay_from`` (`controls.read_path` says which row "
      f"applies to which update). If {of} beats its replay, its response to this run's "
      "gradients matters, not just the shape of its path.")
  return build_replay


# The stand-in's path is one constant array whatever the recorded values, so two rows (steps 1
# and this) cover any run shorter than twice this.
STAND_IN_LAST_STEP = 1_000_000


def _replay_stand_in(folder: pathlib.Path, of: str, lr: float) -> dict[str, Any]:
  """A minimal recorded `of` run whose path `replay-of` can follow: the LR held at `lr`."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps({"strategy": of}))
  rows = [records.StepRow(step=k, epoch=1, accuracy=None, effective_lr=lr, grad_norm=None,
                          loss=None) for k in (1, STAND_IN_LAST_STEP)]
  (folder / "steps.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in rows))
  return {"replay_from": str(folder)}


register(ControlKind(
    name="null", name_of=lambda of: f"{of}-null", plan=_null_plan, follows_source_run=False,
    description="`X-null` moves the scale at random on X's cadence", rank=0))
register(ControlKind(
    name="matched", name_of=lambda of: f"matched-{of}", plan=_matched_plan,
    build=_matched_build, lr_from_source=True, rank=2,
    description="`matched-X` is fixed Adam at X's mean effective LR"))
register(ControlKind(
    name="replay", name_of=lambda of: f"replay-{of}", plan=_replay_plan, build=_replay_build,
    source_seed=replay_seed, min_source_seeds=2, needs_horizon=True, rank=1,
    stand_in=_replay_stand_in,
    description="`replay-X` follows another seed's recorded LR path, so it has X's schedule "
                "without X's reaction to its own gradients"))

"""The rows of a run's JSONL records: their schema, checked, and their readers.

`train.records` writes them (and re-exports every name here); `StepRow`, `EpochRow` and `EvalRow`
are the schema of steps.jsonl, epochs.jsonl and evals.jsonl. A row with a missing required field
or a field the schema does not know is an error naming the file, the line and the field.
"""

from collections.abc import Mapping
import dataclasses
import functools
import json
import math
import pathlib
import types
import typing
from typing import Any, Union


def _clean(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


# ---------------------------------------------------------------------------------------------
# The rows' schema

# The version of the rows below, which run.json records as `records_schema`. Records written
# before the key existed (every committed one) hold exactly version 1's rows, so a run.json
# without it reads as 1. Raise it with any change to the fields; a field added later gets a
# default, so that the rows written before it still read.
#
# 2: `noise_to_signal` in StepRow and `noise_to_signal_mean` in EpochRow (the gns strategy's).
# 3: the readouts in one mapping: `readouts` in StepRow and EvalRow, `readout_means` in EpochRow,
#    in place of `lr_scale`, `variability`, `noise_to_signal` and their `_mean`s; the epoch's last
#    `lr_scale` is no longer kept (steps.jsonl has it). Rows of 1 and 2 read as rows of 3
#    (`_Row.LEGACY`), so that the rows of one run compare equal whichever schema wrote them.
SCHEMA_VERSION = 3
SCHEMA_KEY = "records_schema"
RUN_INFO = "run.json"


def schema_version(info: Mapping[str, Any], where: Any = RUN_INFO) -> int:
  """The schema version of a run.json's rows; an error when this code cannot read it."""
  version = info.get(SCHEMA_KEY, 1)
  if isinstance(version, bool) or not isinstance(version, int) or not (
      1 <= version <= SCHEMA_VERSION):
    raise ValueError(f"{where}: {SCHEMA_KEY} is {version!r}; this code reads records schema "
                     f"1 to {SCHEMA_VERSION}")
  return version


def _allowed(hint) -> tuple[type, ...]:
  """The Python types a field's value may have; an int is a float (JSON keeps no difference)."""
  if typing.get_origin(hint) is dict:
    return (dict,)
  union = typing.get_origin(hint) in (Union, types.UnionType)
  out = []
  for t in typing.get_args(hint) if union else (hint,):
    out += [int, float] if t is float else [t]
  return tuple(out)


def _absent(value: Any) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value))


@functools.cache
def _schema(cls) -> tuple[dict[str, tuple[type, ...]], tuple[str, ...]]:
  """Per field its allowed types, and the required fields (those without a default)."""
  hints = typing.get_type_hints(cls)
  fields = dataclasses.fields(cls)
  return ({f.name: _allowed(hints[f.name]) for f in fields},
          tuple(f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING))


def _readouts(name: str, value: Any) -> dict[str, float]:
  """A readouts mapping, checked, without the readouts that have no value (None or NaN)."""
  if not isinstance(value, Mapping):
    raise ValueError(f"{name} must be a mapping of readout names to numbers, got {value!r}")
  out = {}
  for key, v in value.items():
    if not isinstance(key, str) or isinstance(v, bool) or not isinstance(v, (int, float,
                                                                             type(None))):
      raise ValueError(f"{name}[{key!r}] must be a number or None, got {v!r}")
    if not _absent(v):
      out[key] = v
  return out


class _Row:
  """A record row: typed fields, one JSON object per line. Non-finite floats are `None` when
  read back (JSON `null`); in memory, before writing, they may be NaN or inf.

  `READOUTS` names the row's readouts mapping; `LEGACY` maps the fields of rows of schema 1 and
  2 to the readouts they became (a field mapped to None is dropped when read).
  """
  READOUTS = "readouts"
  LEGACY: Mapping[str, str | None] = {}

  def __post_init__(self):
    for name, allowed in _schema(type(self))[0].items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, allowed):
        kinds = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise ValueError(f"{type(self).__name__}.{name} must be {kinds}, got {value!r}")
      if name == self.READOUTS:
        object.__setattr__(self, name, _readouts(f"{type(self).__name__}.{name}", value))

  def readout(self, name: str) -> float | None:
    """The row's value of a readout; None where it has none."""
    return getattr(self, self.READOUTS).get(name)

  @classmethod
  def _upgrade(cls, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A row of schema 1 or 2 (it has a `LEGACY` field) as a row of this schema."""
    if not any(k in row for k in cls.LEGACY):
      return row
    out = {k: v for k, v in row.items() if k not in cls.LEGACY}
    legacy = {cls.LEGACY[k]: v for k, v in row.items() if k in cls.LEGACY and cls.LEGACY[k]}
    out[cls.READOUTS] = {**legacy, **dict(row.get(cls.READOUTS) or {})}
    return out

  @classmethod
  def from_json(cls, row: Mapping[str, Any], where: Any = None):
    """The row of a JSON object (or a dict), which must hold every required field and no other
    than the schema's; the errors name `where` (a file and line) and the fields."""
    where = where or cls.__name__
    if not isinstance(row, Mapping):
      raise ValueError(f"{where}: a {cls.__name__} is a JSON object, got {row!r}")
    row = cls._upgrade(row)
    kinds, required = _schema(cls)
    missing = [name for name in required if name not in row]
    if missing:
      raise ValueError(f"{where}: {cls.__name__} lacks the required field(s) "
                       f"{', '.join(missing)}")
    # Unknown fields are an error, not kept: a renamed field would otherwise read as its
    # default, and a new one would be dropped unseen. A new field goes into the schema.
    unknown = sorted(set(row) - set(kinds))
    if unknown:
      raise ValueError(f"{where}: {cls.__name__} (records schema {SCHEMA_VERSION}) has no "
                       f"field(s) {', '.join(unknown)}")
    try:
      return cls(**row)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None

  def as_dict(self) -> dict[str, Any]:
    """The row's JSON object: every required field, and the optional ones that hold a value.

    An optional float that is NaN counts as absent, as None does: the train step reports NaN for
    a reading its strategy does not have (`noise_to_signal` without gns), and so the rows of the
    runs without it stay as they were written before the field existed.
    """
    required = _schema(type(self))[1]
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name in required or not _empty(getattr(self, f.name))}


def _empty(value: Any) -> bool:
  return _absent(value) or (isinstance(value, dict) and not value)


# The step's own metrics; every other metric of a step is a readout of its strategy.
STEP_METRICS = ("accuracy", "effective_lr", "grad_norm", "loss")


def _mapping():
  return dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepRow(_Row):
  """A row of steps.jsonl: the train step's metrics (`train.step`) at one step."""
  LEGACY = {"lr_scale": "lr_scale", "variability": "variability",
            "noise_to_signal": "noise_to_signal"}

  step: int  # optimizer updates done, 1-based
  epoch: int  # 1-based
  accuracy: float | None
  effective_lr: float | None
  grad_norm: float | None
  loss: float | None
  readouts: dict[str, float] = _mapping()  # the strategy's readouts (`train.strategies`)

  @classmethod
  def from_metrics(cls, step: int, epoch: int, metrics: Mapping[str, Any]) -> "StepRow":
    """The row of one step's metrics (host scalars): `STEP_METRICS`, and readouts."""
    values = {k: float(v) for k, v in metrics.items()}
    return cls.from_json({"step": step, "epoch": epoch,
                          **{k: values.pop(k) for k in STEP_METRICS if k in values},
                          "readouts": values}, "train step metrics")


@dataclasses.dataclass(frozen=True)
class EpochRow(_Row):
  """A row of epochs.jsonl: one epoch's deterministic metrics, then its measured resources.

  The means are over the epoch's steps with a finite loss and gradient; `effective_lr` is the
  epoch's last step's. `readout_means` holds the means of the strategy's readouts.
  """
  READOUTS = "readout_means"
  LEGACY = {"lr_scale": None, "lr_scale_mean": "lr_scale", "variability_mean": "variability",
            "noise_to_signal_mean": "noise_to_signal"}

  epoch: int  # 1-based
  step: int  # optimizer updates at the epoch's end
  train_loss: float | None
  train_accuracy: float | None
  val_loss: float | None
  val_accuracy: float | None
  effective_lr: float | None
  effective_lr_mean: float | None
  train_time_s: float | None  # the epoch's training clock (evaluation and writing excluded)
  train_time_total_s: float | None  # the training clock up to the epoch's end
  elapsed_s: float | None  # wall time since the start, compilation and evaluation included
  cpu_time_s: float | None  # process CPU time during the epoch's training
  examples_per_s: float | None
  peak_rss_mb: float | None
  device_memory_mb: float | None  # None where the backend does not report it (CPU)
  nonfinite_steps: int | None = None  # only with skip_nonfinite: the steps it skipped
  readout_means: dict[str, float] = _mapping()


@dataclasses.dataclass(frozen=True)
class EvalRow(_Row):
  """A row of evals.jsonl: a validation evaluation at a multiple of `eval_every_steps`.

  At an epoch's last step it is that epoch's evaluation (the `EpochRow`'s val_loss and
  val_accuracy). `effective_lr` and `readouts` are the step's just taken (the readouts that the
  strategy declares `at_evals`).
  """
  LEGACY = {"lr_scale": "lr_scale", "noise_to_signal": "noise_to_signal"}

  step: int  # optimizer updates done, 1-based
  epoch: int  # 1-based, the epoch that step belongs to
  examples: int  # training examples seen: step x the global batch
  train_time_s: float | None  # the training clock so far (evaluation and writing excluded)
  val_loss: float | None
  val_accuracy: float | None
  effective_lr: float | None
  readouts: dict[str, float] = _mapping()


# Rows read by their schema-1 and -2 names: `row.lr_scale` is `row.readout("lr_scale")`, and an
# epoch row's `lr_scale_mean` its `readout_means["lr_scale"]`.
for _cls in (StepRow, EpochRow, EvalRow):
  for _old, _new in _cls.LEGACY.items():
    if _new is not None:
      setattr(_cls, _old, property(lambda self, _new=_new: self.readout(_new)))


def _read_rows(cls, path: pathlib.Path, missing_ok: bool) -> list:
  path = pathlib.Path(path)
  try:
    lines = path.read_text().splitlines()
  except FileNotFoundError:
    if missing_ok:
      return []
    raise
  rows = []
  for i, line in enumerate(lines):
    try:
      value = json.loads(line)
    except ValueError:
      if i == len(lines) - 1:
        break  # cut short by an interruption: the last line, written after every other
      raise ValueError(f"{path}:{i + 1}: not a JSON object (the file is damaged)") from None
    rows.append(cls.from_json(value, f"{path}:{i + 1}"))
  return rows


def read_steps(path: pathlib.Path, missing_ok: bool = False) -> list[StepRow]:
  """The rows of a steps.jsonl (none if `missing_ok` and there is no file)."""
  return _read_rows(StepRow, path, missing_ok)


def read_epochs(path: pathlib.Path, missing_ok: bool = False) -> list[EpochRow]:
  """The rows of an epochs.jsonl (none if `missing_ok` and there is no file)."""
  return _read_rows(EpochRow, path, missing_ok)


def read_evals(path: pathlib.Path, missing_ok: bool = False) -> list[EvalRow]:
  """The rows of an evals.jsonl (none if `missing_ok` and there is no file: a run without
  `eval_every_steps`)."""
  return _read_rows(EvalRow, path, missing_ok)

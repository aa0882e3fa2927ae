"""The typed run configuration: defaults are the seed's, `--set key=value` overrides any field.

Validation happens here, before any data is read or anything compiles, and every error names the
field. A run writes its resolved config to `<workdir>/config.json`.
"""

import ast
import dataclasses
import json
import pathlib
import types
import typing
from typing import Any, Optional

SIZES = ("full", "small", "tiny")
PARALLEL = ("pmap", "shard_map")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run. The seed fixes batch 32, LR 1e-3, 20 epochs and Adam."""

  task: str
  workdir: str
  strategy: str = "fixed"
  # The model family to train (`models.names()`); None takes the task's. `local:DIR` needs one.
  model_family: Optional[str] = None
  model_size: str = "full"
  epochs: int = 20
  batch_size: int = 32
  lr: float = 1e-3
  seed: int = 0
  parallel: str = "pmap"
  dtype: str = "float32"
  data_dir: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  # Devices to train on (the first N local ones); None takes all.
  num_devices: Optional[int] = None
  # Use only the first N examples of the (already shuffled) training split; None takes all.
  train_examples: Optional[int] = None
  # Evaluate on the first N validation examples; None takes the whole split.
  eval_examples: Optional[int] = None
  eval_batch_size: Optional[int] = None
  # steps.jsonl gets one row every N steps; metrics come to the host only then.
  log_every: int = 10
  # Tokenised inputs and vocabularies are cached here (default: <workdir>/../.cache).
  cache_dir: Optional[str] = None
  quiet: bool = False
  # Checkpoints go to <workdir>/checkpoints after every epoch, and every N steps if set.
  checkpoint_every_steps: Optional[int] = None
  # How many checkpoints to keep; two or more let a damaged latest one fall back to the previous.
  keep_checkpoints: int = 3
  # Skip updates whose gradients are not finite (optax.apply_if_finite) instead of stopping.
  skip_nonfinite: bool = False
  # Model options: `checkpoint` (pretrained weights) and any field of the model's config.
  model: dict = dataclasses.field(default_factory=dict)
  # Input options: `max_len`, `vocab_size`, `min_count`, `vocab_file`, `augment`.
  data: dict = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def write(self, path: pathlib.Path) -> None:
    path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


def _parse_scalar(field: str, text: str, kind: Any) -> Any:
  """Converts `text` to the field's type; the error names the field."""
  origin = typing.get_origin(kind)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if text.lower() in ("none", "null"):
      return None
    kind = args[0]
  try:
    if kind is bool:
      if text.lower() in ("1", "true", "yes", "on"):
        return True
      if text.lower() in ("0", "false", "no", "off"):
        return False
      raise ValueError(text)
    if kind is int:
      return int(text)
    if kind is float:
      return float(text)
    if kind is str:
      return text
  except ValueError:
    raise ValueError(f"--set {field}={text}: expected {kind.__name__}") from None
  raise ValueError(f"--set {field}: cannot be set from the command line")


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string, e.g. a path


def apply_overrides(config: Config, assignments: list[str]) -> Config:
  """Applies `key=value` strings: top-level fields, or `model.X` / `data.X` entries."""
  hints = typing.get_type_hints(Config)
  changes: dict[str, Any] = {}
  nested = {"model": dict(config.model), "data": dict(config.data)}
  for item in assignments:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ValueError(f"--set expects key=value, got {item!r}")
    section, dot, sub = key.partition(".")
    if dot and section in nested:
      nested[section][sub] = _literal(value)
    elif key in hints and key not in nested:
      changes[key] = _parse_scalar(key, value, hints[key])
    else:
      known = ", ".join(sorted(set(hints) - set(nested)) + ["model.<option>", "data.<option>"])
      raise ValueError(f"--set {key}: unknown field; known fields: {known}")
  return dataclasses.replace(config, **changes, **nested)


def validate(config: Config) -> None:
  """Checks everything that does not need the data or the model; errors name the field."""
  from train import strategies, tasks  # the registries

  def fail(field, message):
    raise ValueError(f"config.{field}: {message}")

  try:  # The task (or local:DIR folder) and the model family, and that they fit.
    tasks.resolve(config.task, config.model_family)
  except tasks.TaskError as e:
    fail(e.field, e)
  if config.strategy not in strategies.names():
    fail("strategy",
         f"unknown strategy {config.strategy!r}; known strategies: {', '.join(strategies.names())}")
  if config.model_size not in SIZES:
    fail("model_size", f"must be one of {', '.join(SIZES)}, got {config.model_size!r}")
  if config.parallel not in PARALLEL:
    fail("parallel", f"must be one of {', '.join(PARALLEL)}, got {config.parallel!r}")
  if config.dtype not in DTYPES:
    fail("dtype", f"must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
  for name in ("epochs", "batch_size", "log_every", "keep_checkpoints"):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      fail(name, f"must be a positive int, got {value!r}")
  for name in ("num_devices", "train_examples", "eval_examples", "eval_batch_size",
               "checkpoint_every_steps"):
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      fail(name, f"must be a positive int or None, got {value!r}")
  if not isinstance(config.lr, (int, float)) or not config.lr > 0:
    fail("lr", f"must be positive, got {config.lr!r}")
  if not isinstance(config.skip_nonfinite, bool):
    fail("skip_nonfinite", f"must be a bool, got {config.skip_nonfinite!r}")
  if not config.workdir:
    fail("workdir", "is required")

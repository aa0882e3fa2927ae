"""The typed run configuration: every field, default, help text and role is written here once.

The CLI (`python -m train`) is built from these fields, a run can start from a file
(`--config FILE`, the JSON that `Config.write` writes), and `--set key=value` overrides any field.
Validation happens here, before any data is read or anything compiles, and every error names the
field. A run writes its resolved config to `<workdir>/config.json`.

Each field's metadata says what it does besides its value:

- `help`: its help text;
- `flag`: its CLI flag, when it differs from `--field-name` (`None`: no flag, set it with `--set`);
  `choices` and `metavar` go to the flag too;
- `trajectory`: whether it changes the training trajectory, so that `--resume` refuses a
  checkpoint made with another value;
- `records`: whether it changes what the run records, so that the comparison runner does not reuse
  a finished run made with another value (a field that changes the trajectory changes the records);
- `owner`: who sets it in a comparison: `"runner"` (the comparison runner, for every run: where
  it goes and what it shares), `"suite"` (a suite's own keys: its tasks, strategies and seeds, so
  not a setting of `[defaults]` or `[tasks.NAME]`) or `"anyone"`;
- `check`: a rule of `train.fields.RULES` (`positive_int`, ...) that `validate` applies; the same
  metadata-driven checker (`train.fields`) reads the suite files' tables.
"""

import ast
import dataclasses
import json
import pathlib
import typing
from typing import Any, Optional

from train import fields as fields_lib

SIZES = ("full", "small", "tiny")
PARALLEL = ("pmap", "shard_map")
DTYPES = ("float32", "bfloat16")
OWNERS = ("runner", "suite", "anyone")


def _field(default=dataclasses.MISSING, *,
           help: str,
           trajectory: bool = True, records: bool = True, owner: str = "anyone",
           check: Optional[str] = None, default_factory=dataclasses.MISSING, **cli) -> Any:
  """A config field with its metadata (see above); `cli` holds `flag`, `choices`, `metavar`;
  `check` is a rule of `train.fields.RULES` that `validate` applies.

  A field that says nothing else changes the trajectory and the records, and anyone sets it.
  """
  return fields_lib.field(default, check=check, default_factory=default_factory, help=help,
                          trajectory=trajectory, records=records, owner=owner, **cli)


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run. The seed fixes batch 32, LR 1e-3, 20 epochs and Adam."""

  task: str = _field(help="what to train on: a task (see below), or local:DIR with --model",
                     owner="suite")
  workdir: str = _field(help="where records and the final params go", trajectory=False,
                        records=False, owner="runner")
  strategy: str = _field("fixed", help="LR strategy", owner="suite")
  model_size: str = _field("full", help="full: the seed's size; small: CPU size; tiny: tests",
                           choices=SIZES)
  epochs: int = _field(20, help="epochs to train", check="positive_int")
  batch_size: int = _field(32, help="global batch over all devices", check="positive_int")
  lr: float = _field(1e-3, help="base learning rate")
  seed: int = _field(0, help="random seed of the initialisation, the data order and dropout",
                     owner="suite")
  parallel: str = _field("pmap", help="launcher of the data-parallel step", choices=PARALLEL)
  dtype: str = _field("float32", help="compute dtype; params and optimizer state stay float32",
                      choices=DTYPES)
  data_dir: Optional[str] = _field(
      None, help="folder of the offline stand-ins (default: $GRADVAR_DATA_DIR, else the "
                 "project's data/)",
      trajectory=False, records=False, owner="runner")
  tfds_data_dir: Optional[str] = _field(None, help="TFDS data folder (default: TFDS's own)",
                                        trajectory=False, records=False)
  num_devices: Optional[int] = _field(
      None, help="use the first N local devices (default: all)", metavar="N",
      check="positive_int")
  train_examples: Optional[int] = _field(
      None, help="use only the first N examples of the (already shuffled) training split "
                 "(default: all)", metavar="N", check="positive_int")
  eval_examples: Optional[int] = _field(
      None, help="evaluate on the first N validation examples (default: the whole split)",
      metavar="N", check="positive_int")
  eval_batch_size: Optional[int] = _field(
      None, help="evaluation batch (default: 8 x the training batch)", trajectory=False,
      metavar="N", check="positive_int")
  log_every: int = _field(
      10, help="steps.jsonl gets one row every N steps; metrics come to the host only then",
      trajectory=False, metavar="N", check="positive_int")
  cache_dir: Optional[str] = _field(
      None, help="tokenised inputs and vocabularies are cached here "
                 "(default: <workdir>/../.cache)", trajectory=False, records=False, owner="runner")
  quiet: bool = _field(False, help="no progress bars (for CI)", trajectory=False, records=False,
                       owner="runner")
  checkpoint_every_steps: Optional[int] = _field(
      None, help="also checkpoint every K steps (default: after every epoch only)",
      trajectory=False, flag="--checkpoint-every", metavar="K", check="positive_int")
  keep_checkpoints: int = _field(
      3, help="checkpoints to keep; two or more let a damaged latest one fall back to the "
              "previous", trajectory=False, metavar="N", check="positive_int")
  skip_nonfinite: bool = _field(
      False, help="skip steps with a non-finite gradient (optax.apply_if_finite) and count them, "
                  "instead of stopping", trajectory=False)
  collective_timeout_s: Optional[int] = _field(
      None, help="end the run with an error when a step makes no progress for S seconds (a "
                 "collective stuck on a multi-host run, any stall on one host); it must exceed "
                 "the longest step, evaluation and checkpoint save (default: no limit)",
      trajectory=False, records=False, flag="--collective-timeout", metavar="S",
      check="positive_int")
  model: dict = _field(
      help="model options: `checkpoint` (pretrained weights) and any field of the model's "
           "config (--set model.X=V)", default_factory=dict, flag=None)
  data: dict = _field(
      help="input options: `max_len`, `vocab_size`, `min_count`, `vocab_file`, `augment` "
           "(--set data.X=V)", default_factory=dict, flag=None)
  model_family: Optional[str] = _field(
      None, help="model family to train (default: the task's; required with --task local:DIR)",
      flag="--model", metavar="NAME")
  replay_from: Optional[str] = _field(
      None, help="replay-X strategies: the folder of the recorded X run whose effective-LR path "
                 "(its steps.jsonl) they follow; relative paths are from where the run starts",
      owner="runner", metavar="DIR")
  eval_every_steps: Optional[int] = _field(
      None, help="also evaluate on the validation split every K steps, one row of evals.jsonl "
                 "each (default: after every epoch only); strategies that watch the "
                 "validation loss (plateau) then see these evaluations", metavar="K",
      check="positive_int")
  warmup_steps: Optional[int] = _field(
      None, help="a fixed warmup of K steps for the strategies that take one (gns, "
                 "schedule-free; the others ignore it), the same at every run length (default: "
                 "one epoch, at most a tenth of the run)", metavar="K", check="positive_int")
  gns_groups: int = _field(
      4, help="groups the global batch is split into for the gradient noise scale (strategy "
              "gns; the others ignore it): at least 2, a multiple of the device count (each "
              "device takes gns_groups / devices microbatches) and a divisor of the batch",
      metavar="N")
  gns_every: int = _field(
      1, help="compute the groups (gns_groups) on every K-th step only, from the first; the "
              "other steps are plain ones, on which gns holds (its averages are then over "
              "the same span of steps, from K times fewer observations)", metavar="K",
      check="positive_int")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def write(self, path: pathlib.Path) -> None:
    path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def field_names(*, trajectory: Optional[bool] = None, records: Optional[bool] = None,
                owners: Optional[tuple[str, ...]] = None) -> frozenset[str]:
  """The fields whose roles match, e.g. `field_names(trajectory=False)`: those a resume allows."""
  return frozenset(
      name for name, f in FIELDS.items()
      if (trajectory is None or f.metadata["trajectory"] == trajectory)
      and (records is None or f.metadata["records"] == records)
      and (owners is None or f.metadata["owner"] in owners))


def flag(name: str) -> Optional[str]:
  """The field's CLI flag (`--batch-size`), or None when only `--set` reaches it."""
  return FIELDS[name].metadata.get("flag", "--" + name.replace("_", "-"))


def scalar_type(name: str) -> type:
  """The field's type without `Optional`: bool, int, float, str or dict."""
  return fields_lib.scalar_type(_HINTS[name])


def _check_value(name: str, value: Any, where: str) -> Any:
  """A JSON value for the field, type-checked (an int is taken for a float field)."""
  return fields_lib.check_type(_HINTS[name], value, f"{where}{name}")


def check_values(values: dict[str, Any], where: str = "config.") -> dict[str, Any]:
  """Field values from JSON or TOML, checked: unknown keys and wrong types are errors.

  Args:
    values: field name -> value, any subset of the fields.
    where: what an error starts with, before the field's name (`config.`, or the file).

  Returns:
    The values, with ints given for float fields made floats.
  """
  unknown = sorted(set(values) - set(FIELDS))
  if unknown:
    raise ValueError(f"{where}{unknown[0]}: unknown config field; known fields: "
                     f"{', '.join(FIELDS)}")
  return {k: _check_value(k, v, where) for k, v in values.items()}


def read(path) -> dict[str, Any]:
  """The fields set in a config file (the JSON of `Config.write`); errors name the file."""
  path = pathlib.Path(path)
  try:
    values = json.loads(path.read_text())
  except OSError as e:
    raise ValueError(f"--config {path}: cannot read it ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"--config {path}: not valid JSON ({e})") from None
  if not isinstance(values, dict):
    raise ValueError(f"--config {path}: must hold a JSON object of config fields")
  return check_values(values, where=f"--config {path}: ")


def _parse_scalar(field: str, text: str) -> Any:
  """Converts `text` to the field's type; the error names the field."""
  kind = scalar_type(field)
  if kind is not _HINTS[field] and text.lower() in ("none", "null"):  # Optional
    return None
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
  """A `--set model.X=V` / `data.X=V` value: JSON as in the config files (`false`, `null`,
  `[1, 2]`), else a Python literal (`False`, `(1, 2)`), else the text itself (a path)."""
  try:
    return json.loads(text)
  except ValueError:
    pass
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: Config, assignments: list[str]) -> Config:
  """Applies `key=value` strings: top-level fields, or `model.X` / `data.X` entries."""
  hints = _HINTS
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
      changes[key] = _parse_scalar(key, value)
    else:
      known = ", ".join(sorted(set(hints) - set(nested)) + ["model.<option>", "data.<option>"])
      raise ValueError(f"--set {key}: unknown field; known fields: {known}")
  return dataclasses.replace(config, **changes, **nested)


def validate(config: Config) -> None:
  """Checks everything that does not need the data or the model; errors name the field."""
  from train import strategies  # the registries
  from train import tasks  # the registries

  def fail(field, message):
    raise ValueError(f"config.{field}: {message}")

  try:  # The task (or local:DIR folder) and the model family, and that they fit.
    tasks.resolve(config.task, config.model_family)
  except tasks.TaskError as e:
    fail(e.field, e)
  if config.strategy not in strategies.names():
    fail("strategy",
         f"unknown strategy {config.strategy!r}; known strategies: {', '.join(strategies.names())}")
  for name, f in FIELDS.items():
    choices = f.metadata.get("choices")
    if choices and getattr(config, name) not in choices:
      fail(name, f"must be one of {', '.join(choices)}, got {getattr(config, name)!r}")
  fields_lib.check_rules(config, "config.")  # the fields' `check` rules
  if not isinstance(config.lr, (int, float)) or not config.lr > 0:
    fail("lr", f"must be positive, got {config.lr!r}")
  if not isinstance(config.skip_nonfinite, bool):
    fail("skip_nonfinite", f"must be a bool, got {config.skip_nonfinite!r}")
  if not config.workdir:
    fail("workdir", "is required")
  # A replay-X run without replay_from is refused when its strategy is built (strategies.build,
  # naming the field): a suite's grid is validated before the runner knows which run to replay.
  if not config.strategy.startswith("replay-") and config.replay_from is not None:
    fail("replay_from", f"is only for the replay-X strategies, not {config.strategy!r}")

"""Checks of a frozen dataclass's fields, driven by each field's type and metadata.

One checker serves the run configuration (`train.config.Config`) and the suite files
(`benchmarks.suite`, whose tables are frozen dataclasses too). A value from JSON or TOML is
checked against its field:

- by its `check` metadata, when the field has one: a rule of `RULES` (below), which says both the
  type and the range, in one message (`must be a positive int, got 0`); an `Optional` field also
  takes None;
- else by its annotation: bool, int, float (an int is taken), str, dict, tuple (from a list),
  `Any`, or `Optional` of one (`expected int, got 'eight'`).

Every error is a `ValueError` that starts with `where` and the field's name, so that it names
the file (or `config.`) and the field. A dataclass field whose metadata says `key=False` is not
read from the file (the dataclass fills it itself).
"""

from collections.abc import Callable, Mapping
import dataclasses
import re
import types
import typing
from typing import Any


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _list(v, item: Callable[[Any], bool]) -> bool:
  return isinstance(v, (list, tuple)) and bool(v) and all(item(x) for x in v)


# name -> (test of the value, what the error says it must be). A rule's value is returned as
# given, with lists made tuples and (for number rules) ints made floats where the field is float.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: _number(v) and v > 0, "must be a positive number"),
    "positive_int": (lambda v: _int(v) and v >= 1, "must be a positive int"),
    "count": (lambda v: _int(v) and v >= 0, "must be an int >= 0"),
    "fraction": (lambda v: _number(v) and 0 < v < 1, "must be a number in (0, 1)"),
    "at_least_one": (lambda v: _number(v) and v >= 1, "must be a number >= 1"),
    "bool": (lambda v: isinstance(v, bool), "must be true or false"),
    "text": (lambda v: isinstance(v, str), "must be a string"),
    "name": (lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", v) is not None,
             "must be a plain name (letters, digits, _ . -)"),
    "ints": (lambda v: _list(v, _int), "must be a non-empty list of ints"),
    "strs": (lambda v: _list(v, lambda x: isinstance(x, str)),
             "must be a non-empty list of strings"),
    "str_list": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
                 "must be a list of strings"),
    "table": (lambda v: isinstance(v, dict), "must be a table"),
}
# List rules whose items must also differ from each other.
_UNIQUE = frozenset({"ints", "strs"})


def field(default=dataclasses.MISSING, *, check: str | None = None, key: bool = True,
          default_factory=dataclasses.MISSING, **metadata) -> Any:
  """A dataclass field with a `check` rule (see `RULES`) and other metadata.

  Args:
    default: its default; a field without one is required.
    check: the rule its value must meet; None: its annotation's type. A `must` metadata entry
      words its error instead of the rule's.
    key: whether it is read from the file (False: the dataclass fills it).
    default_factory: as in `dataclasses.field`.
    **metadata: anything else its owner reads (Config's `help`, `trajectory`, ...).
  """
  if check is not None and check not in RULES:
    raise ValueError(f"field: check must be one of {', '.join(RULES)}, got {check!r}")
  return dataclasses.field(default=default, default_factory=default_factory,
                           metadata={"check": check, "key": key, **metadata})


def _optional(hint) -> tuple[Any, bool]:
  """The annotation without `Optional`, and whether it had one."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0], len(args) < len(typing.get_args(hint))
  return hint, False


def scalar_type(hint) -> type:
  """The annotation's type without `Optional` (for a `tuple[int, ...]`: tuple)."""
  kind = _optional(hint)[0]
  return typing.get_origin(kind) or kind


def check_type(hint, value: Any, where: str) -> Any:
  """A value for a field annotated `hint`, type-checked (an int is taken for a float field);
  `where` names the field in the error (`config.batch_size`)."""
  kind, optional = _optional(hint)
  if kind is Any or (value is None and optional):
    return value
  kind = typing.get_origin(kind) or kind
  if kind is float and _int(value):
    return float(value)
  if kind is tuple and isinstance(value, list):
    return tuple(value)
  if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
    return value
  suffix = " or null" if optional else ""
  raise ValueError(f"{where}: expected {kind.__name__}{suffix}, got {value!r}")


def check_rule(rule: str, value: Any, where: str, hint=None, must: str | None = None) -> Any:
  """A value that meets `RULES[rule]`; `hint` (the field's annotation) allows None where it is
  `Optional` and makes ints floats where it is float; `must` words the error instead of the
  rule (`must be a table of task = value`)."""
  kind, optional = _optional(hint) if hint is not None else (None, False)
  if value is None and optional:
    return value
  test, must = RULES[rule][0], must or RULES[rule][1]
  if not test(value):
    raise ValueError(f"{where}: {must}{' or None' if optional else ''}, got {value!r}")
  if rule in _UNIQUE and len(set(value)) != len(value):
    raise ValueError(f"{where}: has duplicates: {list(value)!r}")
  if isinstance(value, list):
    return tuple(value)
  if kind is float and _int(value):
    return float(value)
  return value


def keys(cls) -> dict[str, dataclasses.Field]:
  """The fields of `cls` that are read from a file."""
  return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("key", True)}


def check(cls, values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
  """The values of a dataclass's fields as written in a file, each checked (see above).

  Args:
    cls: the dataclass.
    values: key -> value from the file; an unknown key and a missing required one are errors.
    where: what an error starts with, before the field's name (`x.toml: analysis.`).

  Returns:
    The checked values of the keys given (lists as tuples); defaults are not filled in.
  """
  known = keys(cls)
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"{where}{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
  for name, f in known.items():
    if (name not in values and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING):
      raise ValueError(f"{where}{name}: is required")
  hints = typing.get_type_hints(cls)
  out = {}
  for name, value in values.items():
    rule, must = known[name].metadata.get("check"), known[name].metadata.get("must")
    out[name] = (check_rule(rule, value, where + name, hints[name], must) if rule
                 else check_type(hints[name], value, where + name))
  return out


def check_rules(obj, where: str = "") -> None:
  """Checks every field of a dataclass instance that has a `check` rule (for objects built
  otherwise than from a file, such as a Config after `--set`)."""
  hints = typing.get_type_hints(type(obj))
  for f in dataclasses.fields(obj):
    rule = f.metadata.get("check")
    if rule:
      check_rule(rule, getattr(obj, f.name), where + f.name, hints[f.name])

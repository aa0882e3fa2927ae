"""Label maps: class names in sorted order, so that a class id means the same thing everywhere.

The id of a class is its position in the sorted list of the class names found in the *training*
split (the whole training file, before the validation carve). Names that are all decimal integers
(IDX labels, or JSONL files with integer labels) sort by value, so "10" comes after "9" and the ids
equal the integers; any other names sort as strings. TFDS data sets follow the same rule: AG News's
TFDS ids (World, Sports, Business, Sci/Tech) become Business=0, Sci/Tech=1, Sports=2, World=3;
CIFAR-10's and IMDb's names are already sorted, so their ids do not change.

The map is saved with a run (`save_label_names`), so that a checkpoint can later be evaluated with
the same ids even if the data changed in between (`check_label_names` says what differs).
"""

from collections.abc import Iterable
import json
import os
import re

_INTEGER = re.compile(r"-?[0-9]+")


def sort_label_names(names: Iterable[str]) -> tuple[str, ...]:
  """The distinct names in id order: by integer value when all are integers, else as strings."""
  distinct = set(names)
  for name in distinct:
    if not isinstance(name, str):
      raise ValueError(f"label names must be strings, got {name!r} ({type(name).__name__}).")
  if distinct and all(_INTEGER.fullmatch(n) for n in distinct):
    return tuple(sorted(distinct, key=int))
  return tuple(sorted(distinct))


def save_label_names(path: str | os.PathLike[str], label_names: Iterable[str], *,
                     source: str = "") -> None:
  """Writes a label map as JSON: `{"source": ..., "label_names": [...]}` (id = list position)."""
  payload = {"source": source, "label_names": list(label_names)}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, ensure_ascii=False, indent=1)
    f.write("\n")


def load_label_names(path: str | os.PathLike[str]) -> tuple[str, ...]:
  """Reads a label map written by `save_label_names`."""
  with open(path, encoding="utf-8") as f:
    try:
      payload = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{os.fspath(path)}: not a label map (invalid JSON: {e}).") from e
  names = payload.get("label_names") if isinstance(payload, dict) else None
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(
        f"{os.fspath(path)}: not a label map; expected {{\"label_names\": [\"name\", ...]}}.")
  return tuple(names)


def check_label_names(saved: Iterable[str], current: Iterable[str]) -> None:
  """Raises if a saved label map and a source's differ: the ids would mean other classes."""
  saved, current = tuple(saved), tuple(current)
  if saved != current:
    raise ValueError(
        "label map mismatch: the run was saved with label_names="
        f"{list(saved)} but the data now gives {list(current)}; class ids would not line up.")

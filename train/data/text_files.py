"""Local text-classification files: JSONL and CSV with `text` and `label` columns.

- JSONL: one JSON object per line, UTF-8, e.g. `{"text": "a gripping film", "label": "positive"}`.
  The label is a string or an integer. A final newline is optional; a blank line is an error.
- CSV: UTF-8, RFC 4180 quoting, a header row naming at least `text` and `label`; other columns are
  ignored (an id, say). A field may span lines inside quotes.

Either may carry `text_b` (the second text of a pair task): then every row has it.

Every row is checked as it is read. A malformed line, a missing or empty text, or a missing or
empty label raises a `ValueError` naming the file and line. No row is skipped: the counts of the
splits are exactly the counts of the files.
"""

import csv
import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from train.data import _files

JSONL_EXAMPLE = '{"text": "a gripping, well acted film", "label": "positive"}'
CSV_EXAMPLE = 'text,label\n"a gripping, well acted film",positive'


@dataclasses.dataclass(frozen=True)
class TextTable:
  """The rows of one file, as read; `lines[i]` is the line where row i starts (for errors)."""

  path: pathlib.Path
  texts: list[str]
  texts_b: list[str] | None
  labels: list[str]
  lines: np.ndarray

  def __len__(self) -> int:
    return len(self.texts)

  def where(self, row: int) -> str:
    return f"{self.path}, line {int(self.lines[row])}"


class _Rows:
  """Collects checked rows; the first row decides whether the file has `text_b`."""

  def __init__(self, path: pathlib.Path, has_b: bool | None = None):
    self.path = path
    self.has_b = has_b
    self.texts: list[str] = []
    self.texts_b: list[str] = []
    self.labels: list[str] = []
    self.lines: list[int] = []

  def add(self, row: dict[str, Any], line: int, example: str) -> None:
    where = f"{self.path}, line {line}"
    for key in ("text", "label"):
      if key not in row:
        raise ValueError(f"{where}: no {key!r} field; each row needs text and label, "
                         f"e.g. {example}")
    self.texts.append(_text(row["text"], where, "text"))
    if self.has_b is None:
      self.has_b = "text_b" in row
    if self.has_b != ("text_b" in row):
      raise ValueError(f"{where}: {'no' if self.has_b else 'a'} 'text_b' field, unlike the first "
                       "row; in a pair task every row has text_b, otherwise none does.")
    if self.has_b:
      self.texts_b.append(_text(row["text_b"], where, "text_b"))
    self.labels.append(_label(row["label"], where))
    self.lines.append(line)

  def table(self) -> TextTable:
    if not self.texts:
      raise ValueError(f"{self.path}: no examples in the file.")
    return TextTable(self.path, self.texts, self.texts_b if self.has_b else None, self.labels,
                     np.asarray(self.lines, dtype=np.int64))


def _text(value: Any, where: str, field: str) -> str:
  if not isinstance(value, str):
    raise ValueError(f"{where}: {field} must be a string, got {json.dumps(value)}.")
  if not value.strip():
    raise ValueError(f"{where}: {field} is empty.")
  return value


def _label(value: Any, where: str) -> str:
  # bool is an int in Python; `true` is no class name.
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  if isinstance(value, str) and value.strip():
    return value
  raise ValueError(f"{where}: label must be a non-empty string or an integer, got "
                   f"{json.dumps(value)}.")


def _parse_jsonl(path: pathlib.Path) -> TextTable:
  rows = _Rows(path)
  lines = path.read_bytes().split(b"\n")
  if lines[-1] == b"":  # The newline that ends the last line.
    lines.pop()
  for number, raw in enumerate(lines, start=1):
    where = f"{path}, line {number}"
    try:
      line = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
      raise ValueError(f"{where}: not valid UTF-8 ({e}).") from e
    if not line.strip():
      raise ValueError(f"{where}: blank line; every line must be a JSON object, "
                       f"e.g. {JSONL_EXAMPLE}")
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno}); every line must "
                       f"be a JSON object, e.g. {JSONL_EXAMPLE}") from e
    if not isinstance(row, dict):
      raise ValueError(f"{where}: a JSON {type(row).__name__}, not an object; e.g. {JSONL_EXAMPLE}")
    rows.add(row, number, JSONL_EXAMPLE)
  return rows.table()


def _parse_csv(path: pathlib.Path) -> TextTable:
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f, strict=True)
    try:
      header = next(reader, None)
      if header is None:
        raise ValueError(f"{path}: empty file; expected a header row and rows, e.g.\n{CSV_EXAMPLE}")
      missing = [c for c in ("text", "label") if c not in header]
      duplicated = sorted({c for c in header if header.count(c) > 1})
      if missing or duplicated:
        raise ValueError(f"{path}, line 1: the header {header} "
                         + (f"lacks {missing}" if missing else f"repeats {duplicated}")
                         + f"; expected columns text and label, e.g.\n{CSV_EXAMPLE}")
      rows = _Rows(path, has_b="text_b" in header)
      start = reader.line_num + 1
      for fields in reader:
        if len(fields) != len(header):
          raise ValueError(f"{path}, line {start}: {len(fields)} fields where the header has "
                           f"{len(header)} ({', '.join(header)}); quote fields that hold commas.")
        rows.add(dict(zip(header, fields, strict=True)), start, CSV_EXAMPLE.replace("\n", " then "))
        start = reader.line_num + 1
    except csv.Error as e:
      raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({e}).") from e
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}, line {reader.line_num + 1}: not valid UTF-8 ({e}).") from e
  return rows.table()


def read_text_file(path: os.PathLike[str] | str) -> TextTable:
  """The checked rows of a .jsonl or .csv file (parsed once per file version, then cached)."""
  suffix = pathlib.Path(path).suffix
  if suffix == ".jsonl":
    return _files.cached_parse(path, "jsonl", _parse_jsonl)
  if suffix == ".csv":
    return _files.cached_parse(path, "csv", _parse_csv)
  raise ValueError(f"{path}: unknown text file type {suffix!r}; expected .jsonl or .csv.")

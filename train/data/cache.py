"""An on-disk cache of derived data (token ids, vocabularies), keyed by what it is derived from.

Tokenising AG News takes tens of seconds and training a vocabulary longer; a second epoch, a second
run or a second strategy must not pay for it again. Each entry is stored under the sha256 of its
*key*: a JSON-able dict that names everything the value depends on (the data set's fingerprint, the
split and its indices, the tokenizer's digest, `max_len`, a format version). A changed key is a new
file, so a stale entry is never read; the key is also stored inside the file and compared on
reading, so a foreign or corrupt file is recomputed rather than trusted.

Files are written to a temporary name and renamed, so concurrent runs that share the folder never
read half a file (the last writer wins, with identical content). Nothing is ever deleted: remove
the folder to reclaim the space.
"""

from collections.abc import Callable, Mapping
import hashlib
import json
import os
import pathlib
import threading
import zipfile
from typing import Any

import numpy as np

# Bumped whenever the layout of a cached value changes, so old files are not read.
FORMAT_VERSION = 1
_KEY_FIELD = "__key__"


def key_digest(key: Mapping[str, Any]) -> str:
  """The sha256 of the key's canonical JSON (sorted keys): equal keys, equal digests."""
  return hashlib.sha256(_canonical(key).encode()).hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
  try:
    return json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, separators=(",", ":"))
  except TypeError as e:
    raise ValueError(f"cache key {key!r} is not JSON-able ({e}).") from e


def array_digest(array: np.ndarray) -> str:
  """A short digest of an array's dtype, shape and bytes (for keys that hold split indices)."""
  array = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  h.update(array.tobytes())
  return h.hexdigest()[:32]


class Cache:
  """Arrays and texts stored under a folder by key (see the module docstring).

  With `directory=None` nothing is stored and every call computes: the same code path serves runs
  that do not want files written.

  Attributes:
    directory: the folder, or None.
    hits, misses: how many calls read a stored value / had to compute it (for tests and logs).
  """

  def __init__(self, directory: str | os.PathLike[str] | None):
    self.directory = pathlib.Path(directory) if directory is not None else None
    self.hits = 0
    self.misses = 0
    self._lock = threading.Lock()

  def path(self, name: str, key: Mapping[str, Any], suffix: str) -> pathlib.Path | None:
    """Where the value of `key` is stored (None without a folder)."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
      raise ValueError(f"cache entry name {name!r} must be letters, digits, '-' or '_'.")
    if self.directory is None:
      return None
    return self.directory / f"{name}-{key_digest(key)[:24]}{suffix}"

  def _count(self, hit: bool) -> None:
    with self._lock:
      if hit:
        self.hits += 1
      else:
        self.misses += 1

  def arrays(self, name: str, key: Mapping[str, Any],
             compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored for `key`, else `compute()`'s, stored (as .npz) for next time."""
    path = self.path(name, key, ".npz")
    canonical = _canonical(key)
    if path is not None and path.is_file():
      try:
        with np.load(path, allow_pickle=False) as npz:
          if str(npz[_KEY_FIELD]) == canonical:
            self._count(hit=True)
            return {k: npz[k] for k in npz.files if k != _KEY_FIELD}
      except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # Unreadable: recompute and overwrite below.
    self._count(hit=False)
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    if _KEY_FIELD in arrays:
      raise ValueError(f"{_KEY_FIELD} is reserved in cached arrays.")
    if path is not None:
      _write_atomic(path, lambda f: np.savez(f, **arrays, **{_KEY_FIELD: np.array(canonical)}))
    return arrays

  def text(self, name: str, key: Mapping[str, Any], compute: Callable[[], str]) -> str:
    """The text stored for `key` (e.g. a trained tokenizer's JSON), else `compute()`'s, stored."""
    path = self.path(name, key, ".json")
    canonical = _canonical(key)
    if path is not None and path.is_file():
      try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("key") == canonical and isinstance(payload.get("value"), str):
          self._count(hit=True)
          return payload["value"]
      except (OSError, ValueError, AttributeError):
        pass
    self._count(hit=False)
    value = compute()
    if path is not None:
      data = json.dumps({"key": canonical, "value": value}).encode("utf-8")
      _write_atomic(path, lambda f: f.write(data))
    return value


def _write_atomic(path: pathlib.Path, write: Callable[[Any], Any]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
  try:
    with open(tmp, "wb") as f:
      write(f)
    tmp.replace(path)
  finally:
    tmp.unlink(missing_ok=True)

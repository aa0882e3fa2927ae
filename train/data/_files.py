"""Reading local files once: a cache of parsed contents keyed by the file's identity.

Parsing the stand-ins costs a fraction of a second each (gunzip of 26 MB, 74k JSON lines), but tests
and a benchmark suite ask for the same source many times in one process. The key is the resolved
path with its size and modification time, so an edited file is parsed again.
"""

from collections.abc import Callable
import collections
import os
import pathlib
import threading
from typing import Any

_MAX_ENTRIES = 16
_cache: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_lock = threading.Lock()


def file_id(path: os.PathLike[str] | str) -> tuple[str, int, int]:
  """(resolved path, size, mtime in ns): changes whenever the file is replaced or edited."""
  resolved = pathlib.Path(path).resolve()
  stat = resolved.stat()
  return (str(resolved), stat.st_size, stat.st_mtime_ns)


def cached_parse(path: os.PathLike[str] | str, kind: str,
                 parse: Callable[[pathlib.Path], Any]) -> Any:
  """`parse(path)`, reusing an earlier result for the same file contents and parser `kind`."""
  key = (kind, *file_id(path))
  with _lock:
    if key in _cache:
      _cache.move_to_end(key)
      return _cache[key]
  value = parse(pathlib.Path(path))
  with _lock:
    _cache[key] = value
    while len(_cache) > _MAX_ENTRIES:
      _cache.popitem(last=False)
  return value


def clear_cache() -> None:
  """Forgets every parsed file (for tests and long-lived processes)."""
  with _lock:
    _cache.clear()

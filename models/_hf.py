"""Reading Hugging Face checkpoint folders (`config.json` + `model.safetensors`) without torch.

Shared by the weight loaders of the models: each loader knows its own key names and layouts; this
module knows the files. Tensors come through the `safetensors` package's NumPy API, lazily, so a
loader reads only the tensors it asks for (a pre-training checkpoint's heads are never read).

Every failure is a `ValueError` that names the folder, the file or the tensor, because a loader that
silently skips a tensor or takes a transposed one yields a model that trains, but worse.
"""

from __future__ import annotations

import json
import os
from types import TracebackType
from typing import Any

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# safetensors dtype names that NumPy reads and that a float32 model can take without loss of
# meaning.
_FLOAT_DTYPES = ("F16", "F32", "F64")


def _folder(path: str | os.PathLike) -> str:
  folder = os.fspath(path)
  if not os.path.isdir(folder):
    raise ValueError(f"Checkpoint folder {folder!r} does not exist or is not a directory.")
  return folder


def read_config(path: str | os.PathLike) -> dict[str, Any]:
  """Returns the parsed `config.json` of the checkpoint folder `path`."""
  file = os.path.join(_folder(path), CONFIG_FILE)
  if not os.path.isfile(file):
    raise ValueError(f"No {CONFIG_FILE} in checkpoint folder {os.fspath(path)!r}.")
  try:
    with open(file, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{file!r} is not valid JSON: {e}.") from e
  if not isinstance(config, dict):
    raise ValueError(f"{file!r} must hold a JSON object, got {type(config).__name__}.")
  return config


class SafetensorsReader:
  """Reads float tensors by name from the `model.safetensors` of a checkpoint folder, as float32.

  Use it as a context manager; `get` checks each tensor's presence and shape before reading it.
  """

  def __init__(self, path: str | os.PathLike):
    from safetensors import safe_open  # Only the loaders need it, not the models.

    folder = _folder(path)
    self.file = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(self.file):
      # Name the formats that are there, so that the fix is obvious.
      present = [name for name in ("model.safetensors.index.json", "pytorch_model.bin")
                 if os.path.isfile(os.path.join(folder, name))]
      hint = (f' It has {", ".join(present)}: only a single {WEIGHTS_FILE} is supported; '
              'convert it (e.g. save_pretrained with safe_serialization and a large '
              'max_shard_size).' if present else "")
      raise ValueError(f"No {WEIGHTS_FILE} in checkpoint folder {folder!r}.{hint}")
    try:
      self._handle = safe_open(self.file, framework="numpy")
    except Exception as e:  # The Rust reader raises its own types for corrupt headers.
      raise ValueError(f"{self.file!r} is not a readable safetensors file: {e}") from e
    self._file = self._handle.__enter__()
    self.keys = frozenset(self._file.keys())

  def __enter__(self) -> SafetensorsReader:
    return self

  def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
               tb: TracebackType | None) -> None:
    self._handle.__exit__(exc_type, exc, tb)

  def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Returns tensor `key` as a float32 array after checking that it exists with `shape`."""
    if key not in self.keys:
      raise ValueError(f"{self.file!r} has no tensor {key!r}.")
    view = self._file.get_slice(key)
    actual = tuple(view.get_shape())
    if actual != tuple(shape):
      raise ValueError(
          f"Tensor {key!r} in {self.file!r} has shape {actual}, but the config expects "
          f"{tuple(shape)}.")
    dtype = view.get_dtype()
    if dtype not in _FLOAT_DTYPES:
      # NumPy has no bfloat16, so safetensors' NumPy API cannot read it; integers are no weights.
      raise ValueError(
          f"Tensor {key!r} in {self.file!r} has dtype {dtype}; expected one of {_FLOAT_DTYPES} "
          "(convert the checkpoint to float32).")
    return np.asarray(self._file.get_tensor(key), dtype=np.float32)

"""Uniform examples (records), and the random-access splits and sources that hold them.

Every data set, from TFDS or from local files, yields the same record kinds, so the batching stage
has one code path per kind:

- image: `{"image": np.ndarray uint8 [height, width, channels], "label": int}`;
- text: `{"text": str, "label": int}`, plus `"text_b": str` for pair tasks.

A `Split` is a `Sequence` of records: `len(split)`, `split[i]`, `split[i:j]` (a smaller split)
and `split.__getitems__(indices)` (a list of records: the batched read of PyTorch and TFDS).
It is a view of positions into a `RecordReader`, so the carved train and validation splits share
one reader and no data is copied.
"""

from collections.abc import Sequence
import dataclasses
import numbers
from typing import Any, Literal, Protocol

import numpy as np

Record = dict[str, Any]
Kind = Literal["image", "text"]
KINDS = ("image", "text")
SPLIT_NAMES = ("train", "validation", "test")


class RecordReader(Protocol):
  """What a split reads from: a file or a TFDS split, addressed by its own record index."""

  def __len__(self) -> int:
    ...

  def read(self, indices: np.ndarray) -> list[Record]:
    """The records at these (in-range) indices, checked: a bad one raises, naming where it is."""
    ...


class Split(Sequence):
  """Random access to one split's records: a view of `indices` into a `RecordReader`."""

  def __init__(self, name: str, reader: RecordReader, indices: np.ndarray | None = None):
    self.name = name
    self.reader = reader
    if indices is None:
      indices = np.arange(len(reader), dtype=np.int64)
    self.indices = np.array(indices, dtype=np.int64)  # A copy: ours to freeze.
    self.indices.setflags(write=False)
    if self.indices.ndim != 1 or (
        self.indices.size and not 0 <= self.indices.min() <= self.indices.max() < len(reader)):
      raise ValueError(f"split {name!r}: indices must be a 1-D array in [0, {len(reader)}).")

  def __len__(self) -> int:
    return len(self.indices)

  def _position(self, i: Any) -> int:
    if not isinstance(i, numbers.Integral):
      raise TypeError(f"split {self.name!r}: index must be an int, got {type(i).__name__}.")
    n = len(self.indices)
    j = int(i) + n if i < 0 else int(i)
    if not 0 <= j < n:
      raise IndexError(f"split {self.name!r}: index {int(i)} out of range for {n} records.")
    return j

  def __getitem__(self, i):
    if isinstance(i, slice):
      return Split(self.name, self.reader, self.indices[i])
    j = self._position(i)
    return self.reader.read(self.indices[j : j + 1])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[Record]:
    positions = [self._position(i) for i in indices]
    return self.reader.read(self.indices[positions])

  def __repr__(self) -> str:
    return f"Split({self.name!r}, {len(self)} records)"


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
  """One data set: its kind, label names and the three splits.

  Attributes:
    name: the name it was asked for (e.g. "cifar10", "wordnet_topics", "tfds:glue/sst2").
    kind: "image" or "text": which record kind its splits yield.
    label_names: class names in id order (see `labels`); `label_names[record["label"]]`.
    train: the training split, after the validation carve when there is one.
    validation: the carved (or shipped) validation split.
    test: the test split.
    image_shape: (height, width, channels) of every image; None for text.
    hflip: whether horizontal flips preserve the labels (natural images), for augmentation.
    origin: where the data comes from (a folder, or "tfds:<full name>"), for run records.
    fingerprint: identifies the training data's content, for caches of derived values.
  """

  name: str
  kind: Kind
  label_names: tuple[str, ...]
  train: Split
  validation: Split
  test: Split
  image_shape: tuple[int, int, int] | None = None
  hflip: bool = False
  origin: str = ""
  fingerprint: str = ""
  # Derived values (e.g. normalisation statistics), computed once per source.
  memo: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}.")
    if (self.kind == "image") != (self.image_shape is not None):
      raise ValueError(f"image_shape must be given exactly for image sources, got "
                       f"kind={self.kind!r}, image_shape={self.image_shape!r}.")

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def splits(self) -> dict[str, Split]:
    return {"train": self.train, "validation": self.validation, "test": self.test}

  def split(self, name: str) -> Split:
    if name not in SPLIT_NAMES:
      raise ValueError(f"split must be one of {SPLIT_NAMES}, got {name!r}.")
    return self.splits[name]


def check_image(image: Any, shape: tuple[int, int, int], where: str) -> np.ndarray:
  """The image as uint8 HWC of exactly `shape`; `where` names the record in the error."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"{where}: image dtype is {image.dtype}, expected uint8.")
  if image.ndim == 2 and shape[2] == 1:
    image = image[:, :, None]
  if image.shape != tuple(shape):
    raise ValueError(f"{where}: image shape is {image.shape}, expected {tuple(shape)} (HWC).")
  return image


def check_label(label: Any, num_classes: int, where: str) -> int:
  """The label as a Python int in [0, num_classes)."""
  value = np.asarray(label)
  if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
    raise ValueError(f"{where}: label {label!r} is not an integer class id.")
  if not 0 <= int(value) < num_classes:
    raise ValueError(f"{where}: label {int(value)} is not in the training label set "
                     f"(ids 0..{num_classes - 1}).")
  return int(value)


def check_text(text: Any, where: str, field: str = "text") -> str:
  """The text as a non-empty str (bytes are decoded as UTF-8)."""
  if isinstance(text, (bytes, np.bytes_)):
    try:
      text = bytes(text).decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"{where}: {field} is not valid UTF-8 ({e}).") from e
  elif isinstance(text, np.ndarray) and text.ndim == 0:
    return check_text(text.item(), where, field)
  if not isinstance(text, str):
    raise ValueError(f"{where}: {field} must be a string, got {type(text).__name__}.")
  if not text.strip():
    raise ValueError(f"{where}: {field} is empty.")
  return text

"""Sources from local folders: JSONL or CSV text files, or IDX image files.

A folder holds one of these layouts (the first that matches is read):

- `train.jsonl` + `test.jsonl` (and optionally `validation.jsonl`), see `text_files`;
- `train.csv` + `test.csv` (and optionally `validation.csv`);
- `train-images-idx3-ubyte` + `train-labels-idx1-ubyte` + `t10k-images-idx3-ubyte` +
  `t10k-labels-idx1-ubyte`, each optionally gzipped (`.gz`): the MNIST / Fashion-MNIST layout.

Without a validation file, validation is carved from the training file (`splits`). The label map
is the sorted set of training labels (`labels`); a validation or test label outside it raises a
`ValueError` naming the file and line (or record and byte offset for IDX).
"""

import pathlib

import numpy as np

from train.data import _files
from train.data import idx
from train.data import labels as labels_lib
from train.data import examples
from train.data import splits
from train.data import text_files

_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

LAYOUTS = (
    f"train.jsonl and test.jsonl (one JSON object per line, e.g. {text_files.JSONL_EXAMPLE}); "
    f"or train.csv and test.csv (a header row text,label then one row per example); "
    f"or the IDX files {', '.join(_IDX_STEMS.values())} (each may be gzipped, .gz)")


class TextReader:
  """Records of a text table whose labels are already ids."""

  def __init__(self, table: text_files.TextTable, label_ids: np.ndarray):
    self.table = table
    self.label_ids = label_ids

  def __len__(self) -> int:
    return len(self.table)

  def read(self, indices: np.ndarray) -> list[examples.Record]:
    texts, texts_b = self.table.texts, self.table.texts_b
    out = []
    for i in indices:
      record = {"text": texts[i], "label": int(self.label_ids[i])}
      if texts_b is not None:
        record["text_b"] = texts_b[i]
      out.append(record)
    return out


class ImageArrayReader:
  """Records of an image array [N, H, W, C] uint8 with label ids [N]; images are read-only views."""

  def __init__(self, images: np.ndarray, label_ids: np.ndarray):
    self.images = images
    self.label_ids = label_ids

  def __len__(self) -> int:
    return len(self.images)

  def read(self, indices: np.ndarray) -> list[examples.Record]:
    return [{"image": self.images[i], "label": int(self.label_ids[i])} for i in indices]


def _missing(folder: pathlib.Path, what: str, how_to_obtain: str) -> FileNotFoundError:
  return FileNotFoundError(f"{folder}: {what}. {how_to_obtain}".rstrip())


def _text_label_ids(table: text_files.TextTable, index: dict[str, int], train_path) -> np.ndarray:
  ids = np.empty(len(table), dtype=np.int32)
  shown = ", ".join(list(index)[:30]) + (", ..." if len(index) > 30 else "")
  for row, name in enumerate(table.labels):
    if name not in index:
      raise ValueError(
          f"{table.where(row)}: label {name!r} is not in the training label set of {train_path} "
          f"({len(index)} classes: {shown}).")
    ids[row] = index[name]
  return ids


def text_folder_source(folder: pathlib.Path, name: str, suffix: str, how_to_obtain: str = ""
                       ) -> examples.Source:
  """A text source from `train{suffix}`, `test{suffix}` and an optional `validation{suffix}`."""
  paths = {s: folder / f"{s}{suffix}" for s in examples.SPLIT_NAMES}
  for s in ("train", "test"):
    if not paths[s].is_file():
      raise _missing(folder, f"no {paths[s].name}; expected {LAYOUTS}", how_to_obtain)
  tables = {s: text_files.read_text_file(p) for s, p in paths.items() if p.is_file()}
  label_names = labels_lib.sort_label_names(tables["train"].labels)
  index = {n: i for i, n in enumerate(label_names)}
  readers = {s: TextReader(t, _text_label_ids(t, index, paths["train"])) for s, t in tables.items()}
  pair = {s: t.texts_b is not None for s, t in tables.items()}
  if len(set(pair.values())) > 1:
    raise ValueError(f"{folder}: text_b appears in some files but not others: {pair}.")
  train = examples.Split("train", readers["train"])
  if "validation" in readers:
    validation = examples.Split("validation", readers["validation"])
  else:
    train_idx, val_idx = splits.carve_validation(len(readers["train"]))
    train = examples.Split("train", readers["train"], train_idx)
    validation = examples.Split("validation", readers["train"], val_idx)
  return examples.Source(
      name=name, kind="text", label_names=label_names, train=train, validation=validation,
      test=examples.Split("test", readers["test"]), origin=str(folder),
      fingerprint=":".join(map(str, _files.file_id(paths["train"]))))


def _idx_pair(images_path: pathlib.Path, labels_path: pathlib.Path
              ) -> tuple[np.ndarray, np.ndarray]:
  images = idx.read_idx(images_path)
  labels = idx.read_idx(labels_path)
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise ValueError(f"{images_path}: images must be uint8 of rank 3 [N, H, W] or 4 "
                     f"[N, H, W, C], got {images.dtype} of shape {images.shape}.")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{labels_path}: labels must be integers of rank 1, got {labels.dtype} "
                     f"of shape {labels.shape}.")
  if len(images) != len(labels):
    raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                     f"{len(labels)} labels.")
  if images.ndim == 3:
    images = images[..., None]
  return images, labels


def idx_folder_source(folder: pathlib.Path, name: str, *, hflip: bool = False,
                      how_to_obtain: str = "") -> examples.Source:
  """An image source from the four MNIST-layout IDX files in `folder`."""
  paths = {}
  for key, stem in _IDX_STEMS.items():
    path = idx.find_idx_file(folder, stem)
    if path is None:
      raise _missing(folder, f"no {stem} (or {stem}.gz); expected {LAYOUTS}", how_to_obtain)
    paths[key] = path
  train_images, train_labels = _idx_pair(paths["train_images"], paths["train_labels"])
  test_images, test_labels = _idx_pair(paths["test_images"], paths["test_labels"])
  if test_images.shape[1:] != train_images.shape[1:]:
    raise ValueError(f"{paths['test_images']}: images are {test_images.shape[1:]} (HWC) but the "
                     f"training images are {train_images.shape[1:]}.")
  values = np.unique(train_labels)
  label_names = labels_lib.sort_label_names(str(v) for v in values)
  # Integer names sort by value, so the id of a label is its rank among the training values.
  bad = np.flatnonzero(~np.isin(test_labels, values))
  if bad.size:
    i = int(bad[0])
    offset = 8 + i * test_labels.dtype.itemsize
    raise ValueError(
        f"{paths['test_labels']}: record {i} (byte offset {offset}"
        f"{' decompressed' if paths['test_labels'].suffix == '.gz' else ''}) has label "
        f"{test_labels[i]}, which is not in the training label set {list(label_names)}.")

  def ids(labels: np.ndarray) -> np.ndarray:
    return np.searchsorted(values, labels).astype(np.int32)
  train_reader = ImageArrayReader(train_images, ids(train_labels))
  test_reader = ImageArrayReader(test_images, ids(test_labels))
  train_idx, val_idx = splits.carve_validation(len(train_reader))
  return examples.Source(
      name=name, kind="image", label_names=label_names,
      train=examples.Split("train", train_reader, train_idx),
      validation=examples.Split("validation", train_reader, val_idx),
      test=examples.Split("test", test_reader), image_shape=tuple(train_images.shape[1:]),
      hflip=hflip, origin=str(folder),
      fingerprint=":".join(map(str, _files.file_id(paths["train_images"]))))


def local_source(folder: pathlib.Path, name: str, *, hflip: bool = False,
                 how_to_obtain: str = "") -> examples.Source:
  """The source in `folder`, whichever layout it holds (see the module docstring)."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise _missing(folder, "no such folder", how_to_obtain or f"It should hold {LAYOUTS}.")
  if (folder / "train.jsonl").is_file():
    return text_folder_source(folder, name, ".jsonl", how_to_obtain)
  if (folder / "train.csv").is_file():
    return text_folder_source(folder, name, ".csv", how_to_obtain)
  if idx.find_idx_file(folder, _IDX_STEMS["train_images"]) is not None:
    return idx_folder_source(folder, name, hflip=hflip, how_to_obtain=how_to_obtain)
  raise _missing(folder, f"no data files; expected {LAYOUTS}", how_to_obtain)

"""Sources from TensorFlow Datasets, read with `tfds.data_source` (random access, no TensorFlow).

Any TFDS image- or text-classification data set can be read when it has these feature kinds:

- a `ClassLabel` (the one named `label`, or the only one);
- either an `Image` named `image` of fixed shape and dtype uint8, or `Text` features: the one named
  `text`, the only one, or a known pair (`sentence1`/`sentence2`, `question`/`sentence`,
  `question1`/`question2`, `premise`/`hypothesis`) that becomes `text`/`text_b`.

`SPECS` fixes the choices for the data sets this project knows. AG News joins `title` and
`description` with one space, as its usual text form does. GLUE's test labels are hidden (-1), so
for `glue/*` the published validation split serves as test and validation is carved from train.
Any other data set reads `train` and `test` and carves validation from train, unless its metadata
lists a `validation` split.

Reading needs the data prepared in the array_record format (`tfds.data_source` cannot read
TFRecord). Preparing needs TensorFlow and internet access, see `HOW_TO_PREPARE`. Records are
checked as they are read: an image of the wrong shape, a label outside the label set or an empty
text raises a `ValueError` naming the data set, split and record index.
"""

import dataclasses
import functools
import importlib
import os
from typing import Any

import numpy as np

from train.data import examples
from train.data import labels as labels_lib
from train.data import splits


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
  """How to turn one TFDS data set into a source.

  Attributes:
    text_fields: Text features joined (one space) into "text"; empty to infer.
    text_b_field: the Text feature that becomes "text_b" (pair tasks).
    hflip: natural images, where a horizontal flip keeps the label.
    test_split: the TFDS split read as test.
    validation_split: the TFDS split read as validation; None carves it from train.
  """

  text_fields: tuple[str, ...] = ()
  text_b_field: str | None = None
  hflip: bool = False
  test_split: str = "test"
  validation_split: str | None = None


SPECS: dict[str, TfdsSpec] = {
    "ag_news_subset": TfdsSpec(text_fields=("title", "description")),
    "cifar10": TfdsSpec(hflip=True),
    "cifar100": TfdsSpec(hflip=True),
    "imdb_reviews": TfdsSpec(text_fields=("text",)),
    "glue/sst2": TfdsSpec(text_fields=("sentence",), test_split="validation"),
    "glue/cola": TfdsSpec(text_fields=("sentence",), test_split="validation"),
    "glue/mrpc": TfdsSpec(text_fields=("sentence1",), text_b_field="sentence2",
                          test_split="validation"),
    "glue/rte": TfdsSpec(text_fields=("sentence1",), text_b_field="sentence2",
                         test_split="validation"),
    "glue/qnli": TfdsSpec(text_fields=("question",), text_b_field="sentence",
                          test_split="validation"),
    "glue/qqp": TfdsSpec(text_fields=("question1",), text_b_field="question2",
                         test_split="validation"),
}

_PAIRS = (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
          ("premise", "hypothesis"))

HOW_TO_PREPARE = (
    "Prepare it once on a machine with internet access; that needs TensorFlow "
    "(pip install 'gradvar-optax[suite,prepare]'):\n"
    "  tfds build {name} --file_format=array_record --data_dir DIR\n"
    "(a copy already prepared as TFRecord converts with `tfds convert_format "
    "--root_data_dir DIR --out_file_format=array_record`). Then copy DIR to this machine and "
    "pass it as tfds_data_dir or set TFDS_DATA_DIR. Reading needs no TensorFlow.")


def _tfds():
  import tensorflow_datasets as tfds
  return tfds


def _builder(name: str, data_dir: str | None):
  """The TFDS builder of `name`; a `ValueError` if TFDS has no such data set."""
  tfds = _tfds()
  try:
    return tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.DatasetNotFoundError:
    pass
  # Without TensorFlow, `import tensorflow_datasets` registers only the builders in its
  # `datasets/` folder; the older modules (GLUE, MNIST, ...) register when imported.
  for module in ("image_classification", "text"):
    importlib.import_module(f"tensorflow_datasets.{module}")
  try:
    return tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f"unknown TFDS data set {name!r}: tensorflow-datasets {tfds.__version__} "
                     "has no builder of that name (names look like 'cifar10' or "
                     "'glue/sst2').") from e


def _open_split(name: str, split: str, data_dir: str | None, prepared_dir: str):
  tfds = _tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, try_gcs=False)
  except (NotImplementedError, ValueError, OSError, AssertionError, KeyError) as e:
    if not os.path.isdir(prepared_dir):
      problem = f"not prepared: there is no {prepared_dir}"
    elif isinstance(e, KeyError):
      # A folder with the metadata and no split of that name: an unfinished or partial prepare.
      problem = f"the copy in {prepared_dir} has no prepared split {split!r} ({e.args[0]})"
    else:
      problem = f"the copy in {prepared_dir} is not readable ({e})"
    raise FileNotFoundError(f"TFDS data set {name!r}, split {split!r}: {problem}. "
                            + HOW_TO_PREPARE.format(name=name)) from e


def _label_feature(features, name: str) -> str:
  tfds = _tfds()
  class_labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  if "label" in class_labels:
    return "label"
  if len(class_labels) == 1:
    return class_labels[0]
  raise ValueError(f"TFDS data set {name!r}: expected one ClassLabel feature (or one named "
                   f"'label'), found {class_labels or 'none'} in {sorted(features)}.")


def _text_fields(features, name: str, spec: TfdsSpec) -> tuple[tuple[str, ...], str | None]:
  tfds = _tfds()
  texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
  if spec.text_fields:
    wanted, text_b = spec.text_fields, spec.text_b_field
  elif "text" in texts:
    wanted, text_b = ("text",), None
  elif len(texts) == 1:
    wanted, text_b = (texts[0],), None
  else:
    pair = next((p for p in _PAIRS if set(p) <= set(texts)), None)
    if pair is None:
      raise ValueError(f"TFDS data set {name!r}: cannot tell which of its Text features {texts} "
                       "is the input; supported: one named 'text', a single one, or a pair "
                       f"{list(_PAIRS)}.")
    wanted, text_b = (pair[0],), pair[1]
  for field in (*wanted, *([text_b] if text_b else [])):
    if field not in texts:
      raise ValueError(f"TFDS data set {name!r}: no Text feature {field!r} among {texts}.")
  return wanted, text_b


class TfdsReader:
  """Checked records of one TFDS split; labels remapped to the sorted label map."""

  def __init__(self, data_source, where: str, convert):
    self.data_source = data_source
    self.where = where
    self.convert = convert

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: np.ndarray) -> list[examples.Record]:
    # One `[i]` per record: TFDS 4.9.10's `__getitems__` breaks under `tfds.testing.mock_data`
    # (its mock binds no `self`), and tests must run the same path as real reads.
    return [self.convert(self.data_source[int(i)], f"{self.where}, record {int(i)}")
            for i in indices]


def _convert_image(ex: dict[str, Any], where: str, *, shape, label_key, num_raw, remap):
  return {"image": examples.check_image(ex["image"], shape, where),
          "label": int(remap[examples.check_label(ex[label_key], num_raw, where)])}


def _convert_text(ex: dict[str, Any], where: str, *, fields, text_b, label_key, num_raw, remap):
  # A blank part (say an empty AG News title) adds no stray space; all blank is an error.
  text = " ".join(part for part in (_as_str(ex[f]) for f in fields) if part.strip())
  record = {"text": examples.check_text(text, where, " + ".join(fields)),
            "label": int(remap[examples.check_label(ex[label_key], num_raw, where)])}
  if text_b:
    record["text_b"] = examples.check_text(ex[text_b], where, text_b)
  return record


def _as_str(value: Any) -> str:
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_source(tfds_name: str, *, name: str | None = None, data_dir: str | None = None,
                spec: TfdsSpec | None = None) -> examples.Source:
  """A source reading the TFDS data set `tfds_name` (e.g. "cifar10", "glue/sst2").

  Args:
    tfds_name: the TFDS name, with config and version if wanted ("glue/sst2:2.0.0").
    name: the source's name (default: `tfds_name`).
    data_dir: TFDS's data folder (default: TFDS_DATA_DIR, else ~/tensorflow_datasets).
    spec: how to read it (default: `SPECS[tfds_name]`, else inferred from the features).
  """
  spec = spec or SPECS.get(tfds_name.split(":")[0], TfdsSpec())
  builder = _builder(tfds_name, data_dir)
  info = builder.info
  features = info.features
  label_key = _label_feature(features, tfds_name)
  raw_names = list(features[label_key].names)
  label_names = labels_lib.sort_label_names(raw_names)
  remap = np.array([label_names.index(n) for n in raw_names], dtype=np.int32)

  tfds = _tfds()
  image = features["image"] if "image" in features else None
  if isinstance(image, tfds.features.Image):
    shape = tuple(image.shape)
    if None in shape or len(shape) != 3 or np.dtype(image.np_dtype) != np.uint8:
      raise ValueError(f"TFDS data set {tfds_name!r}: images are {image.np_dtype} of shape "
                       f"{shape}; only fixed-size uint8 images are supported.")
    kind = "image"
    convert = functools.partial(_convert_image, shape=shape, label_key=label_key,
                                num_raw=len(raw_names), remap=remap)
  else:
    shape = None
    kind = "text"
    fields, text_b = _text_fields(features, tfds_name, spec)
    convert = functools.partial(_convert_text, fields=fields, text_b=text_b, label_key=label_key,
                                num_raw=len(raw_names), remap=remap)

  validation_split = spec.validation_split
  # Under tfds.testing.mock_data the split list is a mock that contains nothing: carve then.
  if validation_split is None and "validation" in info.splits and spec.test_split != "validation":
    validation_split = "validation"

  def reader(split: str) -> TfdsReader:
    source = _open_split(tfds_name, split, data_dir, os.fspath(builder.data_dir))
    return TfdsReader(source, f"tfds:{tfds_name} split {split!r}", convert)

  train_reader = reader("train")
  if validation_split is None:
    train_idx, val_idx = splits.carve_validation(len(train_reader))
    train = examples.Split("train", train_reader, train_idx)
    validation = examples.Split("validation", train_reader, val_idx)
  else:
    train = examples.Split("train", train_reader)
    validation = examples.Split("validation", reader(validation_split))
  return examples.Source(
      name=name or tfds_name, kind=kind, label_names=label_names, train=train,
      validation=validation, test=examples.Split("test", reader(spec.test_split)),
      image_shape=shape, hflip=spec.hflip, origin=f"tfds:{info.full_name}",
      fingerprint=f"tfds:{info.full_name}:{len(train_reader)}")

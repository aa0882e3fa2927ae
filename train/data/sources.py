"""The registry of data sets: `get_source(name)` returns a `Source` of uniform records.

Names:

- the seed's data sets, from TFDS: `ag_news_subset`, `cifar10`, `imdb_reviews`;
- the stand-ins for machines without internet access, read from the data folder (`data_dir`, the
  CLI's `--data-dir`, else the environment variable `GRADVAR_DATA_DIR`, else the project's own
  `data/`, which ships them): `fashion_mnist` (IDX, for CIFAR-10), `wordnet_topics` (JSONL, for AG
  News), `rt_sentiment` (JSONL, for IMDb);
- `tfds:<name>` for any TFDS image or text classification set with the same feature kinds
  (`tfds:fashion_mnist`, `tfds:glue/sst2`, `tfds:cifar100`, ...), see `tfds_source`;
- `local:<folder>` for a folder of JSONL, CSV or IDX files, see `local`.
"""

from collections.abc import Callable
import os
import pathlib

from train.data import local
from train.data import examples
from train.data import tfds_source

DATA_DIR_ENV = "GRADVAR_DATA_DIR"
# The project's own copy of the stand-ins (data/README.md). The suite runs from the checkout, so
# the folder sits two levels above this package.
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "data"

# name -> factory(data_dir or None, tfds_data_dir or None)
_REGISTRY: dict[str, Callable[[str | None, str | None], examples.Source]] = {}


def register(name: str):
  """Adds a factory to the registry under `name` (a decorator)."""
  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f"data set {name!r} is already registered.")
    _REGISTRY[name] = factory
    return factory
  return wrap


def known_sources() -> tuple[str, ...]:
  """The registered names (besides the open-ended `tfds:<name>` and `local:<folder>`)."""
  return tuple(sorted(_REGISTRY))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> tuple[pathlib.Path, str]:
  """The stand-ins' folder and where it came from: `data_dir`, else $GRADVAR_DATA_DIR, else data/.

  An empty value counts as not given, as an empty environment variable usually means.
  """
  if data_dir is not None and os.fspath(data_dir):
    return pathlib.Path(data_dir), "data_dir (the CLI's --data-dir)"
  value = os.environ.get(DATA_DIR_ENV)
  if value:
    return pathlib.Path(value), f"${DATA_DIR_ENV}"
  return DEFAULT_DATA_DIR, "the default, the project's own data/"


def _stand_in(name: str, stands_in_for: str, layout: str, *, hflip: bool = False):
  def factory(data_dir, tfds_data_dir):
    del tfds_data_dir
    root, given_by = resolve_data_dir(data_dir)
    how = (f"{name!r} is a stand-in for {stands_in_for}; the data folder {root} comes from "
           f"{given_by}. The project ships it in data/{name}/ as {layout} (see data/README.md): "
           f"give data_dir (--data-dir) or {DATA_DIR_ENV} a folder with that layout, or neither "
           "to use data/.")
    if name == "fashion_mnist":
      how += (" The same data also comes from TFDS as 'tfds:fashion_mnist', prepared on a "
              "machine with internet access.")
    return local.local_source(root / name, name, hflip=hflip, how_to_obtain=how)
  register(name)(factory)


def _tfds(name: str):
  def factory(data_dir, tfds_data_dir):
    del data_dir
    return tfds_source.tfds_source(name, data_dir=tfds_data_dir)
  register(name)(factory)


for _name in ("ag_news_subset", "cifar10", "imdb_reviews"):
  _tfds(_name)
# Fashion-MNIST items are product shots in one pose, not natural scenes: no flips (as for MNIST).
_stand_in("fashion_mnist", "cifar10", "train-images-idx3-ubyte.gz and the other IDX files")
_stand_in("wordnet_topics", "ag_news_subset", "train.jsonl and test.jsonl")
_stand_in("rt_sentiment", "imdb_reviews", "train.jsonl and test.jsonl")


def get_source(name: str, data_dir: str | os.PathLike[str] | None = None, *,
               tfds_data_dir: str | os.PathLike[str] | None = None) -> examples.Source:
  """The data set `name` as a `Source` (kind, label_names, train/validation/test splits).

  Args:
    name: a registered name (`known_sources()`), `tfds:<name>` or `local:<folder>`.
    data_dir: the stand-ins' folder (default: $GRADVAR_DATA_DIR, else the project's data/). Only
      the stand-ins use it.
    tfds_data_dir: TFDS's data folder (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).

  Raises:
    ValueError: an unknown name (the message lists the known ones), or bad data.
    FileNotFoundError: the data is not there; the message says how to obtain it.
  """
  tfds_dir = os.fspath(tfds_data_dir) if tfds_data_dir is not None else None
  if name.startswith("tfds:"):
    return tfds_source.tfds_source(name[len("tfds:"):], name=name, data_dir=tfds_dir)
  if name.startswith("local:"):
    return local.local_source(pathlib.Path(name[len("local:"):]), name)
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown data set {name!r}. Known: {', '.join(known_sources())}; or 'tfds:<name>' for "
        "any TFDS image or text classification set (e.g. tfds:fashion_mnist, tfds:glue/sst2); or "
        "'local:<folder>' for a folder of JSONL, CSV or IDX files.")
  return _REGISTRY[name](os.fspath(data_dir) if data_dir is not None else None, tfds_dir)

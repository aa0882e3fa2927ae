"""Tests of train/data's sources: TFDS under mock_data, the real stand-ins, local files, bad input.

The seed's data sets (AG News, CIFAR-10, IMDb) run under `tfds.testing.mock_data`, the stand-ins
through the same local readers that CI uses (`data_dir` fixture: the project's data/, or
GRADVAR_DATA_DIR), and every
bad-input case on small files written here.
"""

import gzip
import json
import pathlib
import re
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking as tfds_mocking

from train import data
from train.data import images as images_lib
from train.data import sources
from train.data import splits
from train.data import text_files

MOCK_EXAMPLES = 30
SEED_SETS = {  # name: (kind, number of classes)
    "ag_news_subset": ("text", 4),
    "cifar10": ("image", 10),
    "imdb_reviews": ("text", 2),
}


def _mock(**kwargs):
  return tfds.testing.mock_data(num_examples=MOCK_EXAMPLES,
                                policy=tfds.testing.MockPolicy.USE_CODE, **kwargs)


def _check_record(record, source):
  if source.kind == "image":
    assert set(record) == {"image", "label"}
    assert record["image"].dtype == np.uint8
    assert record["image"].shape == source.image_shape
  else:
    assert set(record) == {"text", "label"}
    assert isinstance(record["text"], str) and record["text"].strip()
  assert type(record["label"]) is int
  assert 0 <= record["label"] < source.num_classes


# --- TFDS under mock_data -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_SETS))
def test_tfds_seed_sets_give_uniform_records_and_a_carve_by_index(name):
  kind, num_classes = SEED_SETS[name]
  with _mock():
    source = data.get_source(name)
    assert source.kind == kind
    assert source.num_classes == num_classes
    assert list(source.label_names) == list(data.sort_label_names(source.label_names))
    for split in source.splits.values():
      for record in split:
        _check_record(record, source)
    assert len(source.test) == MOCK_EXAMPLES
    train, val = set(source.train.indices.tolist()), set(source.validation.indices.tolist())
    assert not train & val
    assert train | val == set(range(MOCK_EXAMPLES))
    assert len(val) == MOCK_EXAMPLES // 10
    assert source.train.reader is source.validation.reader


def test_ag_news_joins_title_and_description_and_sorts_labels():
  with _mock():
    source = data.get_source("ag_news_subset")
    raw = tfds.data_source("ag_news_subset", split="test")
    raw_names = tfds.builder("ag_news_subset").info.features["label"].names
    assert source.label_names == ("Business", "Sci/Tech", "Sports", "World")
    for i in range(len(source.test)):
      record, ex = source.test[i], raw[i]
      assert record["text"] == f"{ex['title']} {ex['description']}"
      assert source.label_names[record["label"]] == raw_names[int(ex["label"])]


def test_cifar10_records_are_the_tfds_images():
  with _mock():
    source = data.get_source("cifar10")
    raw = tfds.data_source("cifar10", split="train")
    assert source.image_shape == (32, 32, 3) and source.hflip
    for position, index in enumerate(source.train.indices[:5]):
      np.testing.assert_array_equal(source.train[position]["image"], raw[int(index)]["image"])


@pytest.mark.parametrize("name,kind,shape", [
    ("tfds:fashion_mnist", "image", (28, 28, 1)),
    ("tfds:glue/sst2", "text", None),
])
def test_other_tfds_classification_sets(name, kind, shape):
  with _mock():
    source = data.get_source(name)
    assert source.kind == kind and source.image_shape == shape
    _check_record(source.validation[0], source)


def test_tfds_pair_task_has_text_b():
  with _mock():
    record = data.get_source("tfds:glue/mrpc").test[0]
  assert set(record) == {"text", "text_b", "label"} and record["text_b"].strip()


_BAD_INDEX = 3


def _one_bad_record(bad: dict):
  """mock_data's own example generator, with these fields of record `_BAD_INDEX` replaced.

  mock_data cannot produce a bad record by itself: its generator draws labels below the number of
  classes, images of the features' shape and texts of 10 to 19 letters and spaces (and its
  `max_value` does not reach the data-source mock). So the test keeps the rest of mock_data (the
  real builders and features, tfds's ArrayRecordDataSource over the mocked array_record reader)
  and corrupts one record where mock_data generates it.
  """
  class OneBadRecord(tfds_mocking.RandomFakeGenerator):
    def __getitem__(self, index):
      example = super().__getitem__(index)
      return {**example, **bad} if index == _BAD_INDEX else example

  return OneBadRecord


@pytest.mark.parametrize("name,bad,message", [
    ("cifar10", {"image": np.zeros((31, 32, 3), np.uint8)},
     r"image shape is \(31, 32, 3\), expected \(32, 32, 3\)"),
    ("cifar10", {"image": np.zeros((32, 32, 1), np.uint8)}, r"image shape is \(32, 32, 1\)"),
    ("cifar10", {"label": np.int64(10)}, r"label 10 is not in the training label set"),
    ("imdb_reviews", {"text": " "}, r"text is empty"),
    ("ag_news_subset", {"title": "", "description": ""}, r"title \+ description is empty"),
])
def test_tfds_bad_records_name_the_record(name, bad, message, monkeypatch):
  monkeypatch.setattr(tfds_mocking, "RandomFakeGenerator", _one_bad_record(bad))
  with _mock():
    source = data.get_source(name)
    _check_record(source.test[_BAD_INDEX - 1], source)  # mock_data's own record, read as usual
    with pytest.raises(ValueError,
                       match=rf"tfds:{name} split 'test', record {_BAD_INDEX}: {message}"):
      source.test[_BAD_INDEX]


def test_tfds_data_not_prepared_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    data.get_source("cifar10", tfds_data_dir=tmp_path)
  message = str(info.value)
  assert f"there is no {tmp_path}/cifar10" in message
  assert "tfds build cifar10 --file_format=array_record" in message
  assert "TFDS_DATA_DIR" in message


def test_tfds_folder_with_metadata_and_no_splits_says_how_to_prepare(tmp_path):
  # What an interrupted `tfds build` leaves: dataset_info.json (array_record) and no split
  # files. TFDS then raises a KeyError from its split dict, which must not escape as such.
  from train.data import tfds_source
  builder = tfds_source._builder("cifar10", str(tmp_path))
  pathlib.Path(builder.data_dir).mkdir(parents=True)
  builder.info.as_proto.file_format = "array_record"
  builder.info.write_to_directory(builder.data_dir)
  with pytest.raises(FileNotFoundError) as info:
    data.get_source("cifar10", tfds_data_dir=tmp_path)
  message = str(info.value)
  assert f"the copy in {builder.data_dir} has no prepared split 'train'" in message
  assert "tfds build cifar10 --file_format=array_record --data_dir DIR" in message
  assert isinstance(info.value.__cause__, KeyError)


def test_unknown_names_list_the_known_ones():
  with pytest.raises(ValueError) as info:
    data.get_source("cifar11")
  for name in ("ag_news_subset", "cifar10", "imdb_reviews", "fashion_mnist", "wordnet_topics",
               "rt_sentiment", "tfds:<name>", "local:<folder>"):
    assert name in str(info.value)
  assert set(data.known_sources()) == {"ag_news_subset", "cifar10", "imdb_reviews",
                                       "fashion_mnist", "wordnet_topics", "rt_sentiment"}
  with pytest.raises(ValueError, match="unknown TFDS data set 'no_such_set'"):
    data.get_source("tfds:no_such_set")


# --- The validation carve -------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 9, 10, 11, 1000, 12345])
def test_carve_is_disjoint_covers_train_and_takes_a_tenth(n):
  train, val = data.carve_validation(n)
  assert not set(train.tolist()) & set(val.tolist())
  assert sorted(train.tolist() + val.tolist()) == list(range(n))
  assert len(val) == (0 if n < 2 else max(1, n // 10)) == data.validation_size(n)
  assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_carve_never_changes():
  # Pinned: a change here would move every validation split and break comparisons across versions.
  assert splits.carve_validation(100)[1].tolist() == [0, 5, 13, 39, 45, 52, 65, 70, 87, 91]
  np.random.seed(123)  # The carve uses no global or seeded NumPy randomness.
  assert splits.carve_validation(100)[1].tolist() == [0, 5, 13, 39, 45, 52, 65, 70, 87, 91]


# --- The real stand-ins ---------------------------------------------------------------------------


def _idx_count(path: pathlib.Path) -> int:
  with gzip.open(path) as f:
    header = f.read(8)
  return struct.unpack(">I", header[4:8])[0]


def test_fashion_mnist_counts_labels_and_records(data_dir):
  source = data.get_source("fashion_mnist", data_dir=data_dir)
  folder = data_dir / "fashion_mnist"
  n_train = _idx_count(folder / "train-images-idx3-ubyte.gz")
  assert n_train == _idx_count(folder / "train-labels-idx1-ubyte.gz")
  assert len(source.train) + len(source.validation) == n_train
  assert len(source.validation) == n_train // 10
  assert len(source.test) == _idx_count(folder / "t10k-images-idx3-ubyte.gz")
  assert source.kind == "image" and source.image_shape == (28, 28, 1) and not source.hflip
  assert source.label_names == tuple(str(i) for i in range(10))
  with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
    test_labels = np.frombuffer(f.read()[8:], np.uint8)
  got = [r["label"] for r in source.test.__getitems__(range(len(source.test)))]
  np.testing.assert_array_equal(got, test_labels)


def test_fashion_mnist_normalisation_statistics(data_dir):
  source = data.get_source("fashion_mnist", data_dir=data_dir)
  stats = data.normalization_stats(source)
  assert stats.mean[0] == pytest.approx(0.286, abs=0.002)
  assert stats.std[0] == pytest.approx(0.353, abs=0.002)
  assert data.normalization_stats(source) is stats
  # Exact: the histogram gives the same moments as the direct float64 computation.
  part = source.train[1000:4000]
  pixels = np.stack([r["image"] for r in part]).astype(np.float64) / 255.0
  part_stats = data.compute_channel_stats(part)
  assert part_stats.mean[0] == pytest.approx(pixels.mean(), rel=1e-12)
  assert part_stats.std[0] == pytest.approx(pixels.std(), rel=1e-9)
  normalised = data.normalize(np.stack([r["image"] for r in source.train[:5000]]), stats)
  assert normalised.dtype == np.float32
  assert abs(normalised.mean()) < 0.03 and abs(normalised.std() - 1) < 0.03


@pytest.mark.parametrize("name,classes", [("wordnet_topics", 25), ("rt_sentiment", 2)])
def test_text_stand_ins_match_their_files(data_dir, name, classes):
  source = data.get_source(name, data_dir=data_dir)
  rows = {s: [json.loads(line) for line in (data_dir / name / f"{s}.jsonl").open(encoding="utf-8")]
          for s in ("train", "test")}
  assert len(source.train) + len(source.validation) == len(rows["train"])
  assert len(source.validation) == len(rows["train"]) // 10
  assert len(source.test) == len(rows["test"])
  assert source.label_names == tuple(sorted({r["label"] for r in rows["train"]}))
  assert len(source.label_names) == classes
  for split, file_rows in ((source.validation, rows["train"]), (source.test, rows["test"]),
                           (source.train[:500], rows["train"])):
    for position, index in enumerate(split.indices):
      record = split[position]
      assert record["text"] == file_rows[index]["text"]
      assert source.label_names[record["label"]] == file_rows[index]["label"]


def test_stand_ins_default_to_the_projects_data_folder(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  project_data = pathlib.Path(__file__).resolve().parents[1] / "data"
  assert sources.DEFAULT_DATA_DIR == project_data
  test_file = project_data / "rt_sentiment" / "test.jsonl"
  rows = len(test_file.read_text(encoding="utf-8").splitlines())
  assert len(data.get_source("rt_sentiment").test) == rows
  monkeypatch.setenv(data.DATA_DIR_ENV, "")  # an empty variable counts as unset
  assert len(data.get_source("rt_sentiment").test) == rows


def test_stand_in_data_dir_env_and_argument_override_the_default(tmp_path, monkeypatch):
  def tiny(folder, test_rows):
    _write_jsonl(folder / "rt_sentiment" / "train.jsonl",
                 [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)])
    _write_jsonl(folder / "rt_sentiment" / "test.jsonl",
                 [{"text": f"s{i}", "label": "ab"[i % 2]} for i in range(test_rows)])
  tiny(tmp_path / "env", 3)
  tiny(tmp_path / "arg", 5)
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
  assert len(data.get_source("rt_sentiment").test) == 3
  assert len(data.get_source("rt_sentiment", data_dir=tmp_path / "arg").test) == 5


def test_a_missing_data_folder_is_named_with_where_it_came_from(tmp_path, monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
  with pytest.raises(FileNotFoundError) as info:
    data.get_source("rt_sentiment", data_dir=tmp_path / "given")
  assert str(info.value).startswith(f"{tmp_path / 'given' / 'rt_sentiment'}: no such folder")
  assert "comes from data_dir (the CLI's --data-dir)" in str(info.value)
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "from-env"))
  with pytest.raises(FileNotFoundError) as info:
    data.get_source("wordnet_topics")
  assert str(info.value).startswith(f"{tmp_path / 'from-env' / 'wordnet_topics'}: no such folder")
  assert "comes from $GRADVAR_DATA_DIR" in str(info.value)
  monkeypatch.delenv(data.DATA_DIR_ENV)
  monkeypatch.setattr(sources, "DEFAULT_DATA_DIR", tmp_path / "no-data")
  with pytest.raises(FileNotFoundError) as info:
    data.get_source("fashion_mnist")
  assert str(info.value).startswith(f"{tmp_path / 'no-data' / 'fashion_mnist'}: no such folder")
  assert "comes from the default, the project's own data/" in str(info.value)
  assert "data/README.md" in str(info.value)


def test_augmentation_is_reproducible_from_the_seed(data_dir):
  source = data.get_source("fashion_mnist", data_dir=data_dir)
  batch = source.train.__getitems__(range(64))
  images = np.stack([r["image"] for r in batch])
  indices = np.arange(64)
  first = data.augment_batch(images, seed=7, epoch=3, indices=indices, hflip=True)
  np.testing.assert_array_equal(
      first, data.augment_batch(images, seed=7, epoch=3, indices=indices, hflip=True))
  # Per example: a shuffled batch gets the same augmentation for each image.
  order = np.random.default_rng(0).permutation(64)
  np.testing.assert_array_equal(
      first[order],
      data.augment_batch(images[order], seed=7, epoch=3, indices=indices[order], hflip=True))
  np.testing.assert_array_equal(
      first[5], data.augment(images[5], seed=7, epoch=3, index=5, hflip=True))
  for other in ({"seed": 8, "epoch": 3}, {"seed": 7, "epoch": 4}):
    assert not np.array_equal(first, data.augment_batch(images, indices=indices, hflip=True,
                                                        **other))


# --- Augmentation on any image --------------------------------------------------------------------


def _crops(image: np.ndarray, pad: int, flips: bool):
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      yield (dy, dx, False), crop
      if flips:
        yield (dy, dx, True), crop[:, ::-1]


@pytest.mark.parametrize("shape", [(6, 28, 28, 1), (6, 32, 32, 3), (6, 7, 5, 2), (6, 3, 9, 4)])
@pytest.mark.parametrize("hflip", [False, True])
def test_augmentation_is_a_padded_crop_and_flip_of_any_image(shape, hflip):
  images = np.random.default_rng(1).integers(1, 256, size=shape, dtype=np.uint8)
  out = data.augment_batch(images, seed=0, epoch=0, indices=np.arange(shape[0]) + 100, hflip=hflip)
  assert out.shape == images.shape and out.dtype == np.uint8
  for image, augmented in zip(images, out, strict=True):
    matches = [key for key, crop in _crops(image, 4, hflip) if np.array_equal(crop, augmented)]
    # Pixels are all non-zero, so the zero border shows the offset: one crop matches, unless the
    # image is no larger than the padding and several crops are all border.
    assert len(matches) == 1 if min(shape[1:3]) > 4 else len(matches) >= 1


def test_augmentation_offsets_and_flips_are_uniform():
  images = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1).repeat(2000, axis=0)
  out = data.augment_batch(images, seed=3, epoch=0, indices=np.arange(2000), hflip=True, pad=1)
  seen = []
  for image, augmented in zip(images, out, strict=True):
    (key,) = [k for k, crop in _crops(image, 1, True) if np.array_equal(crop, augmented)]
    seen.append(key)
  counts = {key: seen.count(key) for key in set(seen)}
  assert len(counts) == 18  # Every offset in [0, 2] x [0, 2], flipped or not.
  assert max(counts.values()) < 2 * min(counts.values())
  assert 0.45 < np.mean([k[2] for k in seen]) < 0.55


def test_augmentation_and_normalisation_reject_bad_shapes():
  with pytest.raises(ValueError, match=r"image 7 must be \[height, width, channels\]"):
    data.augment(np.zeros((28, 28), np.uint8), seed=0, epoch=0, index=7, hflip=False)
  with pytest.raises(ValueError, match="one index per image"):
    data.augment_batch(np.zeros((2, 4, 4, 1), np.uint8), seed=0, epoch=0, indices=[0], hflip=False)
  with pytest.raises(ValueError, match="seed must be a non-negative integer"):
    data.augment_batch(np.zeros((1, 4, 4, 1), np.uint8), seed=-1, epoch=0, indices=[0],
                       hflip=False)
  stats = data.ChannelStats(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  with pytest.raises(ValueError, match="do not end in 3 channels"):
    data.normalize(np.zeros((2, 4, 4, 1), np.uint8), stats)
  with pytest.raises(ValueError, match="std of channel 1 is 0.0"):
    data.ChannelStats(mean=(0.5, 0.5), std=(0.2, 0.0))


def test_normalisation_statistics_cache_on_disk(tmp_path, monkeypatch):
  folder = tmp_path / "digits"
  _write_idx_set(folder, gz=False)
  cache = tmp_path / "cache"
  stats = data.normalization_stats(data.get_source(f"local:{folder}"), cache_dir=cache)
  assert len(list(cache.glob("channel_stats-*.json"))) == 1

  def fail(split):
    raise AssertionError("recomputed although cached")
  monkeypatch.setattr(images_lib, "compute_channel_stats", fail)
  assert data.normalization_stats(data.get_source(f"local:{folder}"), cache_dir=cache) == stats


# --- Local files: good input ----------------------------------------------------------------------


def _write_jsonl(path: pathlib.Path, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _idx_bytes(array: np.ndarray) -> bytes:
  return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
      array.astype(np.uint8).tobytes()


def _write_idx_set(folder: pathlib.Path, *, gz: bool, channels: int | None = None, n_train=20,
                   n_test=5, test_labels=None):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  shape = (6, 5) + ((channels,) if channels else ())
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape)),
      "train-labels-idx1-ubyte": np.arange(n_train) % 3,
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape)),
      "t10k-labels-idx1-ubyte": np.arange(n_test) % 3 if test_labels is None else test_labels,
  }
  for stem, array in arrays.items():
    raw = _idx_bytes(np.asarray(array))
    if gz:
      (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
    else:
      (folder / stem).write_bytes(raw)
  return arrays


@pytest.mark.parametrize("gz,channels", [(True, None), (False, 3)])
def test_local_idx_folder(tmp_path, gz, channels):
  arrays = _write_idx_set(tmp_path, gz=gz, channels=channels)
  source = data.get_source(f"local:{tmp_path}")
  assert source.image_shape == (6, 5, channels or 1)
  assert source.label_names == ("0", "1", "2")
  assert (len(source.train), len(source.validation), len(source.test)) == (18, 2, 5)
  for position, index in enumerate(source.validation.indices):
    record = source.validation[position]
    np.testing.assert_array_equal(
        record["image"], arrays["train-images-idx3-ubyte"][index].reshape(6, 5, -1))
    assert record["label"] == arrays["train-labels-idx1-ubyte"][index]


def test_local_jsonl_integer_labels_sort_by_value(tmp_path):
  _write_jsonl(tmp_path / "train.jsonl", [{"text": f"t{i}", "label": i % 12} for i in range(40)])
  _write_jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": 10}])
  source = data.get_source(f"local:{tmp_path}")
  assert source.label_names == tuple(str(i) for i in range(12))
  assert source.test[0] == {"text": "x", "label": 10}
  assert all(r["label"] == int(r["text"][1:]) % 12 for r in source.train)


def test_local_csv_with_pairs_extra_columns_and_a_validation_file(tmp_path):
  header = "id,text,text_b,label\n"
  (tmp_path / "train.csv").write_text(
      header + '1,"first, with a comma",second,yes\n2,"spans\ntwo lines",b,no\n3,c,d,yes\n',
      encoding="utf-8")
  (tmp_path / "validation.csv").write_text(header + "4,e,f,no\n", encoding="utf-8")
  (tmp_path / "test.csv").write_text(header + "5,g,h,yes\n", encoding="utf-8")
  source = data.get_source(f"local:{tmp_path}")
  assert source.label_names == ("no", "yes")
  assert (len(source.train), len(source.validation), len(source.test)) == (3, 1, 1)
  assert source.train[1] == {"text": "spans\ntwo lines", "text_b": "b", "label": 0}
  assert source.validation[0] == {"text": "e", "text_b": "f", "label": 0}


def test_edited_files_are_read_again(tmp_path):
  _write_jsonl(tmp_path / "train.jsonl", [{"text": "old", "label": "a"}] * 3)
  _write_jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "a"}])
  assert data.get_source(f"local:{tmp_path}").train[0]["text"] == "old"
  _write_jsonl(tmp_path / "train.jsonl", [{"text": "newer", "label": "a"}] * 3)
  assert data.get_source(f"local:{tmp_path}").train[0]["text"] == "newer"


def test_label_map_round_trip(tmp_path):
  path = tmp_path / "labels.json"
  data.save_label_names(path, ("Business", "Sci/Tech"), source="ag_news_subset")
  assert data.load_label_names(path) == ("Business", "Sci/Tech")
  data.check_label_names(data.load_label_names(path), ("Business", "Sci/Tech"))
  with pytest.raises(ValueError, match="label map mismatch"):
    data.check_label_names(data.load_label_names(path), ("Business", "Sports"))


# --- Local files: bad input -----------------------------------------------------------------------

_OK = '{"text": "fine", "label": "a"}\n'


@pytest.mark.parametrize("content,line,message", [
    (_OK + _OK + '{"text": "x", "label": \n', 3, "malformed JSON"),
    (_OK + '["text", "label"]\n', 2, "a JSON list, not an object"),
    (_OK + '{"text": "no label"}\n', 2, "no 'label' field"),
    (_OK + '{"text": "   ", "label": "a"}\n', 2, "text is empty"),
    (_OK + '{"text": "x", "label": ""}\n', 2, "label must be a non-empty string or an integer"),
    (_OK + '{"text": 5, "label": "a"}\n', 2, "text must be a string"),
    (_OK + "\n" + _OK, 2, "blank line"),
    (_OK + '{"text": "x", "text_b": "y", "label": "a"}\n', 2, "a 'text_b' field, unlike the first"),
])
def test_bad_jsonl_lines_name_file_and_line(tmp_path, content, line, message):
  (tmp_path / "train.jsonl").write_text(content, encoding="utf-8")
  _write_jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "a"}])
  expected = f"{tmp_path / 'train.jsonl'}, line {line}: {message}"
  with pytest.raises(ValueError, match=re.escape(expected)):
    data.get_source(f"local:{tmp_path}")


def test_bad_utf8_names_the_line(tmp_path):
  (tmp_path / "train.jsonl").write_bytes(_OK.encode() + b'{"text": "\xff", "label": "a"}\n')
  _write_jsonl(tmp_path / "test.jsonl", [{"text": "x", "label": "a"}])
  with pytest.raises(ValueError, match="train.jsonl, line 2: not valid UTF-8"):
    data.get_source(f"local:{tmp_path}")


def test_label_outside_the_training_set_names_file_and_line(tmp_path):
  _write_jsonl(tmp_path / "train.jsonl",
               [{"text": "x", "label": "cat"}, {"text": "y", "label": "dog"}])
  _write_jsonl(tmp_path / "test.jsonl",
               [{"text": "x", "label": "cat"}, {"text": "z", "label": "zebra"}])
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'test.jsonl'}, line 2: label 'zebra' is not in the training label set")):
    data.get_source(f"local:{tmp_path}")


@pytest.mark.parametrize("content,line,message", [
    ('text,label\na,x\n"b, c",y\nd,e,x\n', 4, "3 fields where the header has 2"),
    ('text,label\n"two\nlines",x\n,y\n', 4, "text is empty"),
    ("text,label\na,x\n\n", 3, "0 fields where the header has 2"),
    ('text,label\na,x\n"open quote,x\n', 3, "malformed CSV"),
    ("text,lab\na,x\n", 1, "the header ['text', 'lab'] lacks ['label']"),
])
def test_bad_csv_lines_name_file_and_line(tmp_path, content, line, message):
  (tmp_path / "train.csv").write_text(content, encoding="utf-8")
  (tmp_path / "test.csv").write_text("text,label\nx,x\n", encoding="utf-8")
  expected = f"{tmp_path / 'train.csv'}, line {line}: {message}"
  with pytest.raises(ValueError, match=re.escape(expected)):
    data.get_source(f"local:{tmp_path}")


def test_csv_label_outside_the_training_set(tmp_path):
  (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n", encoding="utf-8")
  (tmp_path / "test.csv").write_text('text,label\n"multi\nline",x\nc,w\n', encoding="utf-8")
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'test.csv'}, line 4: label 'w' is not in the training label set")):
    data.get_source(f"local:{tmp_path}")


def test_truncated_idx_names_file_and_offset(tmp_path):
  _write_idx_set(tmp_path, gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  raw = path.read_bytes()  # 16-byte header + 20 images of 6x5 = 616 bytes.
  path.write_bytes(raw[:16 + 7 * 30 + 11])
  with pytest.raises(ValueError, match=re.escape(
      f"{path}: truncated IDX file: the data ends at byte offset 237 but shape (20, 6, 5) needs "
      "616 bytes; record 7 of 20 is the first incomplete one")):
    data.get_source(f"local:{tmp_path}")
  path.write_bytes(raw[:10])
  with pytest.raises(ValueError, match=re.escape(f"{path}: truncated IDX header")):
    data.get_source(f"local:{tmp_path}")
  path.write_bytes(raw + b"\0\0")
  with pytest.raises(ValueError, match=re.escape(f"{path}: 2 unexpected bytes after the IDX data, "
                                                 "from byte offset 616")):
    data.get_source(f"local:{tmp_path}")
  path.write_bytes(b"\x08\x03" + raw[2:])
  with pytest.raises(ValueError, match=re.escape(f"{path}: not an IDX file")):
    data.get_source(f"local:{tmp_path}")


def test_truncated_gzip_idx_names_file_and_offset(tmp_path):
  _write_idx_set(tmp_path, gz=True)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  compressed = path.read_bytes()
  path.write_bytes(compressed[: len(compressed) // 2])
  with pytest.raises(ValueError, match=re.escape(
      f"{path}: truncated gzip file: the compressed data ends at byte offset "
      f"{len(compressed) // 2}")):
    data.get_source(f"local:{tmp_path}")
  # A complete gzip stream of a truncated IDX file: the offset is in the decompressed data.
  path.write_bytes(gzip.compress(gzip.decompress(compressed)[:100]))
  with pytest.raises(ValueError, match=re.escape(
      f"{path} (decompressed): truncated IDX file: the data ends at byte offset 100")):
    data.get_source(f"local:{tmp_path}")


def test_idx_label_outside_the_training_set_and_count_mismatch(tmp_path):
  _write_idx_set(tmp_path / "a", gz=True, test_labels=np.array([0, 1, 7, 2, 0]))
  with pytest.raises(ValueError, match=re.escape(
      "t10k-labels-idx1-ubyte.gz: record 2 (byte offset 10 decompressed) has label 7, which is "
      "not in the training label set")):
    data.get_source(f"local:{tmp_path / 'a'}")
  _write_idx_set(tmp_path / "b", gz=False, test_labels=np.array([0, 1, 2]))
  with pytest.raises(ValueError, match="holds 5 images but .*t10k-labels-idx1-ubyte holds 3 label"):
    data.get_source(f"local:{tmp_path / 'b'}")


def test_missing_local_data_says_how_to_obtain_it(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    data.get_source(f"local:{tmp_path / 'nowhere'}")
  assert "no such folder" in str(info.value)
  assert text_files.JSONL_EXAMPLE in str(info.value)
  _write_jsonl(tmp_path / "half" / "train.jsonl", [{"text": "x", "label": "a"}])
  with pytest.raises(FileNotFoundError, match="no test.jsonl"):
    data.get_source(f"local:{tmp_path / 'half'}")
  for name in ("wordnet_topics", "fashion_mnist"):
    with pytest.raises(FileNotFoundError) as info:
      data.get_source(name, data_dir=tmp_path)
    assert f"{tmp_path / name}: no such folder" in str(info.value)
    assert "stand-in" in str(info.value) and "GRADVAR_DATA_DIR" in str(info.value)
  assert "tfds:fashion_mnist" in str(info.value)

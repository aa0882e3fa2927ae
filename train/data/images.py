"""Image preprocessing: per-channel normalisation and the training augmentation, in NumPy.

**Normalisation statistics are computed, not looked up.** `normalization_stats(source)` measures
the per-channel mean and standard deviation of the pixel values on the [0, 1] scale over the
source's *training* split (after the validation carve, so validation stays unseen). It is exact:
it counts the 256 possible values per channel and derives both moments from the histogram, so
the order and chunking of the reads do not matter. The result is computed once per `Source` and
kept in `source.memo`; with `cache_dir` it is also written as JSON keyed by the source's
fingerprint, so that a TFDS data set (whose images must be decoded) is measured once per machine.
Published constants would do for CIFAR-10 but not for every data set this suite reads, and one
rule for all keeps the stand-ins honest. For reference, Fashion-MNIST's training images give a
mean of about 0.286 and a std of about 0.353; CIFAR-10's about (0.491, 0.482, 0.447) and
(0.247, 0.243, 0.262).

**Augmentation** (training only): pad 4 pixels of zeros (black, on uint8 images) on each side,
crop back to the original size at a random offset, then, for natural images (`source.hflip`),
flip horizontally with probability 1/2. It works on any height, width and channel count. The
randomness is a pure function of (seed, epoch, example index) through SplitMix64 (`_hashing`),
so a run is reproducible whatever the batch order or the number of data-loading workers, and it
does not depend on NumPy's random streams. Use the example's index in its split, not its
position in the shuffled batch.
"""

from collections.abc import Sequence
import dataclasses
import hashlib
import json
import os
import pathlib

import numpy as np

from train.data import _hashing
from train.data import examples

# Separates the augmentation's hash stream from any other use of (seed, epoch, index).
_AUGMENT_SALT = 0x61756731  # b"aug1"
PAD = 4
_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class ChannelStats:
  """Per-channel mean and std of pixel values on the [0, 1] scale."""

  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __post_init__(self):
    if len(self.mean) != len(self.std) or not self.mean:
      raise ValueError(f"mean and std need one value per channel, got {self.mean} and {self.std}.")
    for c, s in enumerate(self.std):
      if not s > 0:
        raise ValueError(f"std of channel {c} is {s}: the training images are constant in that "
                         "channel, so normalising by it is undefined.")

  def to_dict(self) -> dict[str, list[float]]:
    return {"mean": list(self.mean), "std": list(self.std)}

  @classmethod
  def from_dict(cls, d: dict[str, Sequence[float]]) -> "ChannelStats":
    return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def _images(split: examples.Split, start: int, stop: int) -> np.ndarray:
  images = getattr(split.reader, "images", None)
  if images is not None:  # Local arrays: slice without building records.
    return images[split.indices[start:stop]]
  return np.stack([r["image"] for r in split.__getitems__(range(start, stop))])


def compute_channel_stats(split: examples.Split) -> ChannelStats:
  """The exact per-channel mean and (population) std of a split's images on the [0, 1] scale."""
  if len(split) == 0:
    raise ValueError(f"split {split.name!r} is empty; no statistics to compute.")
  hist = None
  for start in range(0, len(split), _CHUNK):
    chunk = _images(split, start, min(start + _CHUNK, len(split)))
    channels = chunk.shape[-1]
    if hist is None:
      hist = np.zeros((channels, 256), dtype=np.int64)
    for c in range(channels):
      hist[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
  values = np.arange(256, dtype=np.float64) / 255.0
  count = hist.sum(axis=1)
  mean = hist @ values / count
  var = hist @ values**2 / count - mean**2
  return ChannelStats(tuple(mean.tolist()), tuple(np.sqrt(np.maximum(var, 0.0)).tolist()))


def normalization_stats(source: examples.Source, *,
                        cache_dir: str | os.PathLike[str] | None = None) -> ChannelStats:
  """The training split's channel statistics, computed once per source (and per `cache_dir`)."""
  if source.kind != "image":
    raise ValueError(f"source {source.name!r} holds {source.kind}, not images.")
  if "channel_stats" in source.memo:
    return source.memo["channel_stats"]
  path = None
  if cache_dir is not None and source.fingerprint:
    digest = hashlib.sha256(source.fingerprint.encode()).hexdigest()[:16]
    path = pathlib.Path(cache_dir) / f"channel_stats-{digest}.json"
    if path.is_file():
      payload = json.loads(path.read_text())
      if payload.get("fingerprint") == source.fingerprint:
        stats = ChannelStats.from_dict(payload)
        source.memo["channel_stats"] = stats
        return stats
  stats = compute_channel_stats(source.train)
  if path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"fingerprint": source.fingerprint, **stats.to_dict()}, indent=1))
    tmp.replace(path)  # Atomic, so concurrent runs never read half a file.
  source.memo["channel_stats"] = stats
  return stats


def normalize(images: np.ndarray, stats: ChannelStats) -> np.ndarray:
  """uint8 images [..., H, W, C] -> float32 `(x / 255 - mean) / std` per channel."""
  images = np.asarray(images)
  if images.ndim < 3 or images.shape[-1] != len(stats.mean):
    raise ValueError(f"images of shape {images.shape} do not end in {len(stats.mean)} channels "
                     "(HWC or BHWC expected).")
  mean = np.asarray(stats.mean, dtype=np.float32)
  scale = np.asarray(stats.std, dtype=np.float32) * np.float32(255.0)
  return (images.astype(np.float32) - mean * np.float32(255.0)) / scale


def _check_key(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")


def augment_batch(images: np.ndarray, *, seed: int, epoch: int, indices: Sequence[int],
                  hflip: bool, pad: int = PAD) -> np.ndarray:
  """Random crop after `pad`-pixel zero padding, then (if `hflip`) a coin-flip horizontal flip.

  Args:
    images: [B, H, W, C], any dtype (uint8 before `normalize`, so the padding is black).
    seed: the run's data seed.
    epoch: the epoch number.
    indices: [B] each image's index in its split; with seed and epoch it fixes the crop and flip.
    hflip: whether flipping is allowed (natural images: `source.hflip`).
    pad: padding on each side; the crop offset is uniform in [0, 2 * pad] on each axis.

  Returns:
    The augmented images, same shape and dtype.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [batch, height, width, channels], got shape {images.shape}.")
  indices = np.asarray(indices)
  if indices.shape != (images.shape[0],):
    raise ValueError(f"indices must give one index per image ({images.shape[0]}), got shape "
                     f"{indices.shape}.")
  _check_key("seed", seed)
  _check_key("epoch", epoch)
  _check_key("pad", pad)
  if indices.size and (not np.issubdtype(indices.dtype, np.integer) or indices.min() < 0):
    raise ValueError("indices must be non-negative integers.")
  b, h, w, _ = images.shape
  keys = _hashing.hash_keys(_AUGMENT_SALT, seed, epoch, indices.astype(np.uint64))
  span = np.uint64(2 * pad + 1)
  dy = (keys % span).astype(np.int64)
  dx = ((keys >> np.uint64(21)) % span).astype(np.int64)
  flip = (((keys >> np.uint64(42)) & np.uint64(1)) == 1) & hflip
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = np.where(flip[:, None], np.arange(w - 1, -1, -1)[None, :], np.arange(w)[None, :])
  cols = dx[:, None] + cols
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def augment(image: np.ndarray, *, seed: int, epoch: int, index: int, hflip: bool,
            pad: int = PAD) -> np.ndarray:
  """`augment_batch` for one image [H, W, C] with its index in the split."""
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"image {index} must be [height, width, channels], got shape {image.shape}.")
  return augment_batch(image[None], seed=seed, epoch=epoch, indices=[index], hflip=hflip,
                       pad=pad)[0]

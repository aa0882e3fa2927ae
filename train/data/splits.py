"""The fixed validation carve: which training examples are held out for validation.

AG News, CIFAR-10, IMDb and the local stand-ins ship a train and a test split but no validation
split, so one is carved from train *by index*. It must be the same for every strategy, seed and
machine: the comparison of learning-rate strategies reads its validation loss, and a carve that
moved would make runs incomparable. Hence:

- **Size.** `validation_size(n) = n // 10` (10% of the training file, rounded down), and at least
  one example once train has two. The rest stays in train. For the data sets of this project:

  | source | train file | validation | train after the carve |
  |---|---|---|---|
  | `ag_news_subset` | 120,000 | 12,000 | 108,000 |
  | `cifar10` | 50,000 | 5,000 | 45,000 |
  | `imdb_reviews` | 25,000 | 2,500 | 22,500 |
  | `fashion_mnist` (stand-in) | 60,000 | 6,000 | 54,000 |
  | `wordnet_topics` (stand-in) | 73,811 | 7,381 | 66,430 |
  | `rt_sentiment` (stand-in) | 11,432 | 1,143 | 10,289 |

- **Which examples.** Index `i` gets the key `mix64(CARVE_SALT ^ i)` (SplitMix64, see `_hashing`);
  the `validation_size(n)` indices with the largest keys form validation. That is "the last 10%
  after a fixed permutation", with a permutation that depends on nothing but `n`: not on the run
  seed, not on NumPy's random streams (which may change between releases). The files need not be
  shuffled: `wordnet_topics/train.jsonl` is sorted by label, and a contiguous tail would hold
  almost nothing but `weather` glosses.
- **By index, not by TFDS split strings.** `tfds.data_source('cifar10', split='train[90%:]')` would
  do the same job, but `tfds.testing.mock_data` ignores the slice, so tests could not see the
  carve. Here TFDS only ever reads whole splits and the carve is plain index arithmetic.

Both index arrays come back sorted, so reads run forward through the file; shuffling for training
is the batching stage's job.
"""

import numpy as np

from train.data import _hashing

# Validation gets one training example in VALIDATION_EVERY (10%), rounded down.
VALIDATION_EVERY = 10
# Fixed forever: changing it changes every validation split.
CARVE_SALT = 0x6772616476617221  # b"gradvar!"


def validation_size(num_train: int) -> int:
  """How many of `num_train` training examples the carve moves to validation."""
  if num_train < 0:
    raise ValueError(f"num_train must be >= 0, got {num_train}.")
  if num_train < 2:
    return 0
  return max(1, num_train // VALIDATION_EVERY)


def carve_validation(num_train: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits the indices `0..num_train-1` of a training file into (train, validation).

  Args:
    num_train: the number of examples in the training file.

  Returns:
    Two sorted int64 arrays, disjoint, together covering every index once.
  """
  n_val = validation_size(num_train)
  keys = _hashing.mix64(np.uint64(CARVE_SALT) ^ np.arange(num_train, dtype=np.uint64))
  # Stable sort: ties (none expected from a bijection) could not reorder between machines.
  order = np.argsort(keys, kind="stable")
  train = np.sort(order[: num_train - n_val]).astype(np.int64)
  validation = np.sort(order[num_train - n_val :]).astype(np.int64)
  return train, validation

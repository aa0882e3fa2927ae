"""A counter-based hash that gives the data pipeline its fixed, version-proof randomness.

The validation carve and the augmentation must give the same answer on every machine and with every
NumPy release: a run's validation split and its crops are part of what is compared across runs.
NumPy's `Generator` streams carry no such promise (NEP 19), so both use SplitMix64's finaliser, a
pure function of the counter that is cheap to vectorise with wrapping uint64 arithmetic.
"""

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray | int) -> np.ndarray:
  """SplitMix64 of each element: a bijection of uint64 whose output bits look independent."""
  with np.errstate(over="ignore"):  # Wrapping is the point; NumPy warns for 0-d arrays only.
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_keys(*keys: np.ndarray | int) -> np.ndarray:
  """One uint64 per element from several non-negative integer keys (broadcast together)."""
  h = np.zeros((), dtype=np.uint64)
  for key in keys:
    h = mix64(h ^ np.asarray(key, dtype=np.uint64))
  return h

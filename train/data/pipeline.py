"""Training and evaluation batches: shuffled per (seed, epoch), sharded, resumable, placed ahead.

```python
inputs = data.prepare_inputs(source, data.InputOptions("bert", vocab_file=...), cache_dir=...)
pipe = data.Pipeline(inputs, global_batch_size=32, seed=0)
it = pipe.train_iterator(state=None, place=data.mesh_placement(mesh))   # or pmap_placement()
batch = next(it)              # {"input_ids": ..., "label": ...} on device, a few steps ahead
checkpoint["data"] = it.get_state()                  # {"step": 1, "seed": 0, ...}, JSON-able
it = pipe.train_iterator(state=checkpoint["data"])   # continues bit for bit
for batch in pipe.eval_iterator("validation"): ...   # whole split, last batch padded, "mask"
```

**The global batch is the unit.** Epoch `e` visits the training positions in the order
`epoch_order(e)`: the positions sorted by a SplitMix64 hash of (seed, epoch, position) (see
`_hashing`), a permutation that depends on nothing else, neither the NumPy nor the grain version.
Global step `s` of epoch `e` is the slice `[s * B, (s + 1) * B)` of that order, so the global batch
is the same whatever the number of processes and devices. Process `p` of `P` reads only its
consecutive `B / P` rows of each global batch; its devices then take consecutive rows of those. A
global batch that does not divide over all devices raises a `ValueError`. (Tokenisation is the
exception: each process tokenises a whole split once, or reads it from a shared cache folder,
since over the epochs every process meets every example.)

**Epoch tails.** With `drop_remainder=True` (the default) an epoch has `N // B` steps and the
`N % B` positions at the end of its order (a different few each epoch) are not used in it. With
`drop_remainder=False` it has `ceil(N / B)` steps and every example is used exactly once: the
last batch is filled up with the first positions of the same order, and every training batch
then carries a `mask` (1 for real rows, 0 for the fill), which the loss must weight by.

**Evaluation** covers a whole split in order, `ceil(n / B_eval)` batches on every process (the same
count, as collectives need); the last is padded with the split's first example and every eval
batch has a `mask` (int32, 1 for real rows). Nothing is dropped.

**Resumable.** A training iterator's `get_state()` is a small JSON-able dict with the number of
batches the consumer has taken, plus the settings that must match on restore (seed, global batch
size, epoch tails, number of examples); batches are a pure function of the step, so a restored
iterator yields exactly the batches that an uninterrupted one would have. Batches already in the
prefetch buffers are not counted, so prefetching never skips data across a restart. The number of
processes and devices may change between save and restore.

**Threads, not processes.** Batches are assembled by a `grain.MapDataset` over step numbers,
read ahead by grain's thread prefetch (`num_threads`, `prefetch_batches`). Grain's multiprocess
prefetch needs absl flags and leaks shared memory at exit on these machines; with tokens cached,
assembling a batch is NumPy indexing, which threads serve well. With `place`, each batch is put on
the devices (`placement`) `device_prefetch` steps ahead of the step that consumes it.
"""

from collections.abc import Callable, Iterator
import collections
import math
import sys
import threading
from typing import Any

import grain
import numpy as np

from train.data import _hashing
from train.data import inputs as inputs_lib

Batch = dict[str, Any]
# Separates the shuffle's hash stream from the carve's and the augmentation's.
SHUFFLE_SALT = 0x73687566  # b"shuf"
STATE_VERSION = 1
_STATE_FIELDS = ("seed", "global_batch_size", "drop_remainder", "num_examples")


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of `0..num_examples-1` that epoch `epoch` of run seed `seed` visits."""
  keys = _hashing.hash_keys(SHUFFLE_SALT, seed, epoch,
                            np.arange(num_examples, dtype=np.uint64))
  return np.argsort(keys, kind="stable")


class BatchIterator(Iterator[Batch]):
  """Batches of steps `start .. stop - 1`, read ahead by threads and optionally placed on devices.

  Attributes:
    step: the step of the next batch that `next` returns (batches taken so far, from 0).
  """

  def __init__(self, make_batch: Callable[[int], Batch], start: int, stop: int, *,
               read_options: grain.ReadOptions, place: Callable[[Batch], Batch] | None,
               device_prefetch: int, state: dict[str, Any]):
    self.step = start
    self._state = state
    self._place = place
    self._device_prefetch = _check_int("device_prefetch", device_prefetch, 1)
    steps = grain.MapDataset.range(start, stop).map(make_batch)
    self._host = iter(steps.to_iter_dataset(read_options))
    self._ready: collections.deque[Batch] = collections.deque()
    self._exhausted = False

  def __iter__(self) -> "BatchIterator":
    return self

  def _fill(self) -> None:
    want = self._device_prefetch if self._place is not None else 1
    while not self._exhausted and len(self._ready) < want:
      try:
        batch = next(self._host)
      except StopIteration:
        self._exhausted = True
        break
      # device_put is asynchronous: the copies run while earlier steps compute.
      self._ready.append(self._place(batch) if self._place is not None else batch)

  def __next__(self) -> Batch:
    self._fill()
    if not self._ready:
      raise StopIteration
    self.step += 1
    return self._ready.popleft()

  def get_state(self) -> dict[str, Any]:
    """A JSON-able dict for the checkpoint; `train_iterator(state=...)` resumes from it."""
    return {"version": STATE_VERSION, "step": self.step, **self._state}

  def close(self) -> None:
    """Stops the prefetch threads (also done when the iterator is garbage-collected)."""
    close = getattr(self._host, "close", None)
    if close is not None:
      close()
    self._ready.clear()
    self._exhausted = True

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Pipeline:
  """Training and evaluation batches of one `Inputs` for this process (see the module docstring).

  Args:
    inputs: from `prepare_inputs`.
    global_batch_size: examples per step over all processes and devices (the seed's 32).
    seed: the data seed: shuffling and augmentation.
    drop_remainder: drop each epoch's last partial batch (True), or pad and mask it (False).
    eval_batch_size: global batch of evaluation (default: `global_batch_size`).
    process_index, process_count: this process and how many there are (default: jax's); pass
      them to simulate several hosts in one process.
    local_device_count: devices of this process (default: jax's); batches split over them.
    num_threads, prefetch_batches: grain's thread prefetch: workers, and batches read ahead.
  """

  def __init__(self, inputs: inputs_lib.Inputs, *, global_batch_size: int = 32, seed: int = 0,
               drop_remainder: bool = True, eval_batch_size: int | None = None,
               process_index: int | None = None, process_count: int | None = None,
               local_device_count: int | None = None, num_threads: int = 2,
               prefetch_batches: int = 4):
    if process_index is None or process_count is None or local_device_count is None:
      import jax
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
      local_device_count = (jax.local_device_count() if local_device_count is None
                            else local_device_count)
    self.inputs = inputs
    self.seed = _check_int("seed", seed, 0)
    self.drop_remainder = bool(drop_remainder)
    self.process_count = _check_int("process_count", process_count, 1)
    self.process_index = _check_int("process_index", process_index, 0)
    if self.process_index >= self.process_count:
      raise ValueError(f"process_index={process_index} is not below process_count="
                       f"{process_count}.")
    self.local_device_count = _check_int("local_device_count", local_device_count, 1)
    self.global_batch_size = self._check_batch("global_batch_size", global_batch_size)
    self.eval_batch_size = self._check_batch(
        "eval_batch_size", global_batch_size if eval_batch_size is None else eval_batch_size)
    self.local_batch_size = self.global_batch_size // self.process_count
    self.read_options = grain.ReadOptions(
        num_threads=_check_int("num_threads", num_threads, 0),
        prefetch_buffer_size=_check_int("prefetch_batches", prefetch_batches, 0))
    self.train_inputs = inputs.split("train")
    self.num_examples = len(self.train_inputs)
    if self.steps_per_epoch == 0:
      raise ValueError(f"the training split has {self.num_examples} examples, fewer than "
                       f"global_batch_size={self.global_batch_size}: no full batch (pass "
                       "drop_remainder=False or a smaller batch).")
    self._orders: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def _check_batch(self, name: str, value: Any) -> int:
    value = _check_int(name, value, 1)
    devices = self.process_count * self.local_device_count
    if value % devices:
      raise ValueError(
          f"{name}={value} does not divide evenly over {self.process_count} process(es) x "
          f"{self.local_device_count} local device(s) = {devices} devices; use a multiple of "
          f"{devices}.")
    return value

  @property
  def steps_per_epoch(self) -> int:
    if self.drop_remainder:
      return self.num_examples // self.global_batch_size
    return math.ceil(self.num_examples / self.global_batch_size)

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The order of the training positions in `epoch` (kept for the two most recent epochs)."""
    with self._lock:
      order = self._orders.get(epoch)
    if order is None:
      order = epoch_order(self.num_examples, self.seed, epoch)
      order.setflags(write=False)
      with self._lock:
        self._orders[epoch] = order
        while len(self._orders) > 2:
          self._orders.popitem(last=False)
    return order

  def _local(self, positions: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = len(positions) // self.process_count
    rows = slice(self.process_index * b, (self.process_index + 1) * b)
    return positions[rows], mask[rows]

  def train_positions(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's training positions at global step `step`, and which of them are real."""
    step = _check_int("step", step, 0)
    epoch, k = divmod(step, self.steps_per_epoch)
    order = self.epoch_order(epoch)
    b = self.global_batch_size
    positions = order[k * b : (k + 1) * b]
    mask = np.ones(b, dtype=bool)
    if len(positions) < b:  # The last batch of an epoch without drop_remainder.
      mask[len(positions):] = False
      # Cycles through the order if even that is shorter than the gap (a tiny split).
      positions = np.concatenate([positions, np.resize(order, b - len(positions))])
    return self._local(positions, mask)

  def train_batch(self, step: int) -> Batch:
    """This process's batch at global step `step` (what the training iterator yields)."""
    positions, mask = self.train_positions(step)
    batch = self.train_inputs.gather(positions, seed=self.seed, epoch=step // self.steps_per_epoch,
                              train=True)
    if not self.drop_remainder:
      batch["mask"] = mask.astype(np.int32)
    return batch

  def train_iterator(self, state: dict[str, Any] | None = None, *, num_epochs: int | None = None,
                     place: Callable[[Batch], Batch] | None = None,
                     device_prefetch: int = 2) -> BatchIterator:
    """Training batches from the start, or from a state that `get_state()` returned.

    Args:
      state: a saved iterator state; None starts at step 0.
      num_epochs: stop after this many epochs; None runs on indefinitely.
      place: puts a batch on devices (`pmap_placement`, `mesh_placement`); None keeps NumPy.
      device_prefetch: batches placed ahead of the one being consumed.
    """
    fields = {"seed": self.seed, "global_batch_size": self.global_batch_size,
              "drop_remainder": self.drop_remainder, "num_examples": self.num_examples}
    start = 0
    if state is not None:
      start = self._check_state(state, fields)
    stop = sys.maxsize
    if num_epochs is not None:
      stop = _check_int("num_epochs", num_epochs, 0) * self.steps_per_epoch
      if start > stop:
        raise ValueError(f"state step {start} is past the end of {num_epochs} epochs "
                         f"({stop} steps).")
    return BatchIterator(self.train_batch, start, stop, read_options=self.read_options,
                         place=place, device_prefetch=device_prefetch, state=fields)

  def _check_state(self, state: dict[str, Any], fields: dict[str, Any]) -> int:
    if not isinstance(state, dict) or "step" not in state:
      raise ValueError(f"state must be a dict from get_state() with a 'step', got {state!r}.")
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"state version {state.get('version')!r} is not {STATE_VERSION}: it "
                       "was saved by another version of the pipeline.")
    for name in _STATE_FIELDS:
      if state.get(name) != fields[name]:
        raise ValueError(f"state field {name!r} is {state.get(name)!r} but this pipeline has "
                         f"{fields[name]!r}: the saved batches would not be reproduced.")
    return _check_int("state['step']", state["step"], 0)

  def eval_steps(self, split: str = "validation") -> int:
    """How many batches `eval_iterator(split)` yields (the same on every process)."""
    return math.ceil(len(self.inputs.split(split)) / self.eval_batch_size)

  def eval_positions(self, split: str, step: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's positions in `split` at eval step `step`, and which of them are real."""
    n = len(self.inputs.split(split))
    positions = step * self.eval_batch_size + np.arange(self.eval_batch_size, dtype=np.int64)
    mask = positions < n
    return self._local(np.where(mask, positions, 0), mask)

  def eval_batch(self, split: str, step: int) -> Batch:
    """This process's eval batch at `step`: the inputs, "label" and an int32 "mask"."""
    positions, mask = self.eval_positions(split, step)
    batch = self.inputs.split(split).gather(positions, train=False)
    batch["mask"] = mask.astype(np.int32)
    return batch

  def eval_iterator(self, split: str = "validation", *,
                    place: Callable[[Batch], Batch] | None = None,
                    device_prefetch: int = 2) -> BatchIterator:
    """Every example of `split` once, in order, in `eval_steps(split)` masked batches."""
    self.inputs.split(split)  # Tokenise (or load) now, not in a prefetch thread.
    return BatchIterator(lambda step: self.eval_batch(split, step), 0, self.eval_steps(split),
                         read_options=self.read_options, place=place,
                         device_prefetch=device_prefetch, state={"split": split})

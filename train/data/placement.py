"""Putting a process's NumPy batch on its devices, in the layout each launcher's step takes.

- `pmap_placement()`: every array gets a leading device axis, `[local_devices, B_local / D, ...]`,
  with row block `d` on local device `d` (`jax.local_devices()` order, as `jax.pmap` uses). The
  arrays are committed with the sharding that `jax.pmap` itself gives its inputs, so the step
  starts without a copy.
- `mesh_placement(mesh)`: one global `jax.Array` per key, of the global batch, with a
  `NamedSharding` that splits the batch axis over the mesh's data axis (`shard_map`, or `jit` over
  sharded arrays). Built with `jax.make_array_from_process_local_data`: on several hosts each
  process passes its own rows (the `Pipeline` gives process `p` the `p`-th block of every global
  batch, which is the block its devices hold in a mesh ordered by process).

Both return functions `batch -> batch` for `Pipeline.train_iterator(place=...)`, which calls them a
few steps ahead; `jax.device_put` is asynchronous, so the copies overlap the running step.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

Batch = dict[str, Any]
PMAP_AXIS = "devices"


def _rows(key: str, value: np.ndarray, parts: int, what: str) -> None:
  if value.ndim == 0 or value.shape[0] % parts:
    raise ValueError(f"batch[{key!r}] has shape {value.shape}: its first axis must split "
                     f"evenly over {parts} {what}.")


def pmap_placement(devices: Sequence[jax.Device] | None = None) -> Callable[[Batch], Batch]:
  """`batch -> batch` with a leading device axis, committed to `devices` (default: local ones)."""
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty.")
  sharding = NamedSharding(Mesh(np.array(devices), (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))
  d = len(devices)

  def place(batch: Batch) -> Batch:
    split = {}
    for key, value in batch.items():
      value = np.asarray(value)
      _rows(key, value, d, "local devices")
      split[key] = value.reshape(d, value.shape[0] // d, *value.shape[1:])
    return jax.device_put(split, sharding)  # One call for the whole batch: half the overhead.

  return place


def data_mesh(axis_name: str = "data", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all devices (default), ordered by process, with the batch axis `axis_name`."""
  devices = list(jax.devices() if devices is None else devices)
  devices.sort(key=lambda dev: (dev.process_index, dev.id))
  return Mesh(np.array(devices), (axis_name,))


def mesh_placement(mesh: Mesh | None = None,
                   axis_name: str | tuple[str, ...] = "data") -> Callable[[Batch], Batch]:
  """`batch -> batch` of global arrays, batch axis split over `axis_name` of `mesh`.

  Args:
    mesh: the step's mesh (default: `data_mesh(axis_name)` over all devices).
    axis_name: the mesh axis (or axes) that the batch is split over.
  """
  if mesh is None:
    if not isinstance(axis_name, str):
      raise ValueError("pass the mesh when the batch is split over several axes.")
    mesh = data_mesh(axis_name)
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  missing = [n for n in names if n not in mesh.axis_names]
  if missing:
    raise ValueError(f"axis_name {axis_name!r}: the mesh has axes {mesh.axis_names}, not "
                     f"{missing}.")
  sharding = NamedSharding(mesh, PartitionSpec(axis_name))
  processes = len({dev.process_index for dev in mesh.devices.flat})
  local_parts = int(np.prod([mesh.shape[n] for n in names])) // processes

  def place(batch: Batch) -> Batch:
    batch = {key: np.asarray(value) for key, value in batch.items()}
    for key, value in batch.items():
      _rows(key, value, local_parts, f"shards of mesh axis {axis_name!r} on this process")
    # One call for the whole batch (half the overhead of one per key). The global shapes are
    # inferred: the batch axis is this process's rows times the processes in the mesh.
    return jax.make_array_from_process_local_data(sharding, batch)

  return place

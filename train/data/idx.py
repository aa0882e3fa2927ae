"""IDX files, the layout of MNIST and Fashion-MNIST, gzipped or not.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order. Gzip is recognised by its magic bytes,
not by the file name. A file that ends early or carries bytes after its data raises a `ValueError`
that names the file and the byte offset (in the decompressed stream for a .gz file), since a short
read would otherwise silently lose the last images.
"""

import os
import pathlib
import struct
import zlib

import numpy as np

from train.data import _files

# Type code -> big-endian NumPy dtype, as the format defines them.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _gunzip(path: pathlib.Path, data: bytes) -> bytes:
  """Decompresses every gzip member; a cut-off stream names the file and where it stops."""
  out = []
  view = memoryview(data)
  pos = 0
  while pos < len(data):
    stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
      out.append(stream.decompress(view[pos:]))
    except zlib.error as e:
      raise ValueError(f"{path}: corrupt gzip data in the member starting at byte {pos} "
                       f"({e}).") from e
    if not stream.eof:
      raise ValueError(
          f"{path}: truncated gzip file: the compressed data ends at byte offset {len(data)} "
          f"after {sum(map(len, out))} decompressed bytes, before the end of the stream.")
    pos = len(data) - len(stream.unused_data)
  return b"".join(out)


def _parse(path: pathlib.Path) -> np.ndarray:
  data = path.read_bytes()
  compressed = data[:2] == _GZIP_MAGIC
  if compressed:
    data = _gunzip(path, data)
  where = f"{path}" + (" (decompressed)" if compressed else "")
  if len(data) < 4:
    raise ValueError(f"{where}: truncated IDX header: the file ends at byte offset {len(data)}, "
                     "the magic number needs 4 bytes.")
  if data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ValueError(f"{where}: not an IDX file: magic number {data[:4].hex()} at offset 0 "
                     "(expected 0000 then a type code in 08,09,0b,0c,0d,0e and the rank).")
  dtype = np.dtype(_DTYPES[data[2]])
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{where}: truncated IDX header: the file ends at byte offset {len(data)}, "
                     f"the header of a rank-{ndim} array needs {header} bytes.")
  shape = struct.unpack(f">{ndim}I", data[4:header])
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    if len(data) < expected:
      record_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize if ndim else 0
      first_incomplete = (len(data) - header) // record_bytes if record_bytes else 0
      raise ValueError(
          f"{where}: truncated IDX file: the data ends at byte offset {len(data)} but shape "
          f"{shape} needs {expected} bytes; record {first_incomplete} of {shape[0] if ndim else 1} "
          "is the first incomplete one.")
    raise ValueError(f"{where}: {len(data) - expected} unexpected bytes after the IDX data, "
                     f"from byte offset {expected} (shape {shape}).")
  array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  # Native byte order; uint8 (the common case) needs no copy and stays a read-only view.
  return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: os.PathLike[str] | str) -> np.ndarray:
  """The array stored in an IDX file (read-only; parsed once per file version, then cached)."""
  return _files.cached_parse(path, "idx", _parse)


def find_idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  """`folder/stem` or `folder/stem.gz`, whichever exists; None if neither; an error if both."""
  plain, gz = folder / stem, folder / f"{stem}.gz"
  if plain.is_file() and gz.is_file():
    raise ValueError(f"{folder}: both {stem} and {stem}.gz exist; keep one, so it is clear "
                     "which is read.")
  if gz.is_file():
    return gz
  return plain if plain.is_file() else None

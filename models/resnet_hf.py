"""A loader for Hugging Face ResNet checkpoints into `models.resnet`.

`load_hf_resnet` reads the `microsoft/resnet-50` format into `params`
and `batch_stats`. The transformers implementation (`models/resnet/modeling_resnet.py`) matches
this module: stride on the 3x3 (`downsample_in_bottleneck=False`, the default and the value of
`microsoft/resnet-50`), symmetric `kernel // 2` padding, max-pool padding 1, a projection shortcut
exactly where the channels or the stride change, BatchNorm epsilon 1e-5. Its checkpoints' two
options are followed: `downsample_in_bottleneck=True` gives `stride_in_1x1=True` (v1), and
`downsample_in_first_stage=True` gives `first_stage_stride=2`. Such a checkpoint has the ImageNet
stem; a 3x3 stem cannot take its 7x7 weights. To fine-tune on 32x32 images, keep that stem and feed
32x32 (the last stage then works on 1x1 maps) or upsample the inputs (e.g. to 224x224 with
`jax.image.resize`, ~49x the compute), which transfers better.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import _hf
from models import resnet

_HF_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> resnet.ResNetConfig:
  """The `ResNetConfig` of a transformers `ResNetConfig` dict (a checkpoint's `config.json`).

  Args:
    hf_config: the parsed `config.json`.
    **overrides: fields that do not change the weights' shapes, e.g. `axis_name`, `image_size`.
  """
  if hf_config.get("model_type") != "resnet":
    raise ValueError(
        f'config.json has model_type={hf_config.get("model_type")!r}; expected "resnet".')
  if hf_config.get("hidden_act", "relu") != "relu":
    raise ValueError(
        f'config.json has hidden_act={hf_config["hidden_act"]!r}; only "relu" is supported.')
  for key in ("depths", "hidden_sizes", "embedding_size"):
    if key not in hf_config:
      raise ValueError(f"config.json has no {key!r}.")
  layer_type = hf_config.get("layer_type", "bottleneck")
  if layer_type not in resnet.BLOCKS:
    raise ValueError(f"config.json has layer_type={layer_type!r}; expected one of {resnet.BLOCKS}.")
  for name in ("stem", "block", "stage_sizes", "stem_width", "stage_widths", "width_multiplier",
               "stride_in_1x1", "first_stage_stride", "in_channels"):
    if name in overrides:
      raise ValueError(f"{name!r} is fixed by the checkpoint and cannot be overridden.")
  return resnet.ResNetConfig(
      block=layer_type,
      stage_sizes=tuple(hf_config["depths"]),
      stem_width=hf_config["embedding_size"],
      stage_widths=tuple(hf_config["hidden_sizes"]),
      stem="imagenet",
      in_channels=hf_config.get("num_channels", 3),
      image_size=overrides.pop("image_size", 224),
      stride_in_1x1=bool(hf_config.get("downsample_in_bottleneck", False)),
      first_stage_stride=2 if hf_config.get("downsample_in_first_stage", False) else 1,
      **overrides)


def _hf_name(module_path: tuple[str, ...], leaf: str) -> str:
  """The transformers state-dict key (without the `resnet.` prefix) of one Flax variable."""
  *blocks, layer = module_path
  if not blocks:  # The stem: ('stem_conv',) or ('stem_bn',).
    module = "embedder.embedder." + ("convolution" if layer == "stem_conv" else "normalization")
  else:
    (block,) = blocks  # 'stage{i}_block{j}', 1-based.
    stage, index = (int(part[len(prefix):]) - 1
                    for part, prefix in zip(block.split("_"), ("stage", "block")))
    base = f"encoder.stages.{stage}.layers.{index}"
    if layer.startswith("proj_"):
      module = f"{base}.shortcut." + ("convolution" if layer == "proj_conv" else "normalization")
    else:  # conv{k} / bn{k} → layer.{k-1}.convolution / .normalization
      kind, k = ("convolution", layer[4:]) if layer.startswith("conv") else (
          "normalization", layer[2:])
      module = f"{base}.layer.{int(k) - 1}.{kind}"
  return f'{module}.{"weight" if leaf == "kernel" else _HF_BN[leaf]}'


def load_hf_resnet(
    path: str | os.PathLike,
    *,
    num_classes: int,
    rng: jax.Array | None = None,
    dtype: Any = jnp.float32,
    **overrides: Any,
) -> tuple[resnet.ResNetConfig, dict[str, Any]]:
  """Reads a Hugging Face resnet.ResNet checkpoint folder into Flax variables for `ResNet`.

  The folder holds `config.json` and `model.safetensors`, as `microsoft/resnet-50` and
  `save_pretrained` of transformers' `ResNetModel` or `ResNetForImageClassification` write them.
  Every backbone tensor must be there with the right shape; the checkpoint's classifier (if any) is
  dropped and the head is re-initialised for `num_classes`.

  Args:
    path: the checkpoint folder.
    num_classes: classes of the task; the new head's width.
    rng: key for the new head's initialisation (default `jax.random.key(0)`).
    dtype: compute dtype of the model that the variables are checked against.
    **overrides: `ResNetConfig` fields that the checkpoint does not fix, e.g. `axis_name='batch'`
      or `image_size=32`.

  Returns:
    `(config, variables)`: the config (ImageNet stem) to build `ResNet(config, num_classes)` with,
    and `{'params': ..., 'batch_stats': ...}`.

  Raises:
    ValueError: naming the file, the config field or the tensor that is missing, mis-shaped or
      unexpected.

  Example:
    >>> config, variables = load_hf_resnet('resnet-50', num_classes=10)  # doctest: +SKIP
    >>> model = resnet.ResNet(config, num_classes=10)  # doctest: +SKIP
    >>> logits = model.apply(variables, images, train=False)  # doctest: +SKIP
  """
  config = config_from_hf(_hf.read_config(path), **overrides)
  model = resnet.ResNet(config, num_classes, dtype)
  # Shapes only: nothing of the size of resnet.ResNet-50 is allocated or computed here.
  shapes = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), resnet.dummy_input(config))

  with _hf.SafetensorsReader(path) as reader:
    prefix = "resnet." if any(k.startswith("resnet.") for k in reader.keys) else ""
    wanted = {}  # (collection, flax path) → (hf key, torch-layout shape)
    for collection in ("params", "batch_stats"):
      for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes[collection])[0]:
        names = tuple(k.key for k in key_path)
        if names[0] == "head":
          continue
        shape = leaf.shape
        if names[-1] == "kernel":  # Flax HWIO ← torch OIHW.
          shape = (shape[3], shape[2], shape[0], shape[1])
        wanted[(collection, names)] = (prefix + _hf_name(names[:-1], names[-1]), shape)

    hf_keys = {key for key, _ in wanted.values()}
    missing = sorted(hf_keys - reader.keys)
    if missing:
      raise ValueError(
          f'{reader.file!r} lacks {len(missing)} tensor(s) that the config.json architecture '
          f'needs: {", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}.')
    ignored = (prefix + "classifier.", "classifier.")
    unexpected = sorted(k for k in reader.keys - hf_keys
                        if not k.endswith("num_batches_tracked") and not k.startswith(ignored))
    if unexpected:
      raise ValueError(
          f'{reader.file!r} has {len(unexpected)} tensor(s) that the config.json architecture does '
          f'not use: {", ".join(unexpected[:10])}{" ..." if len(unexpected) > 10 else ""}.')

    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for (collection, names), (key, shape) in wanted.items():
      value = reader.get(key, shape)  # Raises, naming the tensor, on a shape mismatch.
      if names[-1] == "kernel":
        value = value.transpose(2, 3, 1, 0)
      node = variables[collection]
      for name in names[:-1]:
        node = node.setdefault(name, {})
      node[names[-1]] = jnp.asarray(value)

  head_input = jnp.zeros((1, config.stage_channels[-1]), jnp.float32)
  head = nn.Dense(**resnet.head_options(num_classes, dtype)).init(
      jax.random.key(0) if rng is None else rng, head_input)
  variables["params"]["head"] = head["params"]
  return config, variables

"""ResNet (v1.5) for image classification, and a loader for Hugging Face ResNet checkpoints.

The seed trains ResNet-50 on CIFAR-10. `ResNet` builds it and its smaller relatives from one
`ResNetConfig`: bottleneck or basic blocks, any stage depths and widths, a width multiplier, and
two stems.

- `imagenet` stem: 7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max-pool, as in He et al. (2016).
  Pretrained weights come with this stem.
- `cifar` stem: one 3x3/1 convolution, BatchNorm, ReLU, no pool. On 32x32 images the ImageNet stem
  would shrink the input to 8x8 before the first block; this one keeps 32x32. It is the default for
  training from scratch.

**v1.5.** A downsampling bottleneck puts its stride on the 3x3 convolution, not on the first 1x1
(torchvision, NVIDIA's "ResNet-50 v1.5"); a 1x1 convolution with stride 2 would discard three
quarters of its input. `stride_in_1x1=True` gives the original v1 for checkpoints that use it.

**Padding matches PyTorch.** Every convolution pads `kernel // 2` on both sides and the max-pool
pads 1 on both sides with -inf, as torch and transformers do. Flax's `'SAME'` at stride 2 on an even
input pads (0, 1) instead: the output shape is the same but every window is shifted by one pixel,
so loaded weights would give other numbers. Hence explicit padding throughout.

**BatchNorm under data parallelism.** Set `ResNetConfig.axis_name` to the axis of `jax.pmap` or
`jax.shard_map` that splits the batch. In training, each BatchNorm then averages the per-device
mean and mean square over that axis (one `pmean` of 2 x channels floats per layer), so it normalises
with the statistics of the global batch, exactly as one device with the whole batch would. The
running averages are then the same on every replica, and eval (`train=False`) uses them, never the
eval batch. Under `jax.jit` with sharded global arrays, leave `axis_name=None`: XLA's partitioner
inserts the reduction itself.

The Flax ImageNet example makes the other choice: its BatchNorm has no `axis_name`, so each device
normalises with the statistics of its own shard (a "virtual" or "ghost" batch, Hoffer et al. 2017).
The replicas' running averages then drift apart, and `sync_batch_stats` averages them before eval
and checkpointing. That saves one small all-reduce per layer and is sound at its per-device batch
of 128+ images. At the seed's global batch of 32 split over 8 devices, each device would see 4
images. Their statistics are noisy (at the last stage, 4 images x 4x4 positions = 64 values per
channel), so the network trains on a much noisier normalisation than the one that eval's running
averages give. The average of per-device variances also misses the spread of the per-device means,
so it underestimates the global variance. And the training dynamics would change with the number
of devices, so runs on different hardware could not be compared. The cost here is one all-reduce of
2 x channels floats per BatchNorm layer in the forward pass (53 layers in ResNet-50) and one in the
backward pass; it is latency, not bandwidth, next to the all-reduce of 25M gradients.

Running averages use Flax's update `ra = momentum * ra + (1 - momentum) * batch`, with momentum 0.9
and epsilon 1e-5: torch's defaults (its momentum 0.1 is the weight of the new batch). One
difference remains in training only: torch folds the *unbiased* batch variance into its running
variance, Flax the biased one (a factor n / (n - 1), with n = batch x height x width per channel).

**Hugging Face checkpoints.** `load_hf_resnet` reads the `microsoft/resnet-50` format into `params`
and `batch_stats`. The transformers implementation (`models/resnet/modeling_resnet.py`) matches
this module: stride on the 3x3 (`downsample_in_bottleneck=False`, the default and the value of
`microsoft/resnet-50`), symmetric `kernel // 2` padding, max-pool padding 1, a projection shortcut
exactly where the channels or the stride change, BatchNorm epsilon 1e-5. Its checkpoints' two
options are followed: `downsample_in_bottleneck=True` gives `stride_in_1x1=True` (v1), and
`downsample_in_first_stage=True` gives `first_stage_stride=2`. Such a checkpoint has the ImageNet
stem; a 3x3 stem cannot take its 7x7 weights. To fine-tune on 32x32 images, keep that stem and feed
32x32 (the last stage then works on 1x1 maps) or upsample the inputs (e.g. to 224x224 with
`jax.image.resize`, ~49x the compute), which transfers better.

Parameter counts (`params` only; `batch_stats` are not parameters): ResNet-50 with the ImageNet
stem and 1000 classes has the canonical 25,557,032; with the CIFAR stem and 10 classes (the `full`
preset on CIFAR-10) 23,520,842.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import _hf

Array = jax.Array

_BLOCKS = ('bottleneck', 'basic')
_STEMS = ('cifar', 'imagenet')
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# He et al. (2015) initialisation with fan_out, as torchvision and transformers initialise convs.
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# A bottleneck's inner width is its output width divided by this (He et al., 2016).
_EXPANSION = 4


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Architecture of `ResNet`.

  Attributes:
    block: `'bottleneck'` (1x1, 3x3, 1x1; ResNet-50 and deeper) or `'basic'` (two 3x3; ResNet-18/34
      and the smaller CPU variants).
    stage_sizes: blocks per stage; each stage after the first halves the resolution.
    stem_width: output channels of the stem convolution (before `width_multiplier`).
    stage_widths: output channels of each stage (before `width_multiplier`). A bottleneck's inner
      width is a quarter of it.
    width_multiplier: scales `stem_width` and `stage_widths` (bottleneck widths are rounded to a
      multiple of 4), so narrow CPU models come from the same code.
    stem: `'cifar'` (3x3/1 conv, no pool) or `'imagenet'` (7x7/2 conv + 3x3/2 max-pool).
    in_channels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR); checked.
    image_size: height and width of the input images. The network itself takes any size (it ends in
      a global average pool); this is the size that `dummy_input` and the data pipeline use.
    zero_init_last_bn: initialise the scale of each block's last BatchNorm to zero, so that each
      residual block starts as the identity (Goyal et al., 2017).
    stride_in_1x1: put a downsampling bottleneck's stride on its first 1x1 convolution (ResNet v1)
      instead of its 3x3 (v1.5, the default). For checkpoints only.
    first_stage_stride: stride of the first stage (1 in ResNet; 2 for some checkpoints).
    axis_name: the `pmap`/`shard_map` axis over which training syncs the batch statistics (see the
      module docstring); None on one device or under `jit` with sharded arrays.
    bn_momentum: decay of the BatchNorm running averages.
    bn_epsilon: added to the variance in BatchNorm.
  """

  block: str = 'bottleneck'
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  stem_width: int = 64
  stage_widths: tuple[int, ...] = (256, 512, 1024, 2048)
  width_multiplier: float = 1.0
  stem: str = 'cifar'
  in_channels: int = 3
  image_size: int = 32
  zero_init_last_bn: bool = False
  stride_in_1x1: bool = False
  first_stage_stride: int = 1
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def __post_init__(self):
    if self.block not in _BLOCKS:
      raise ValueError(f'ResNetConfig.block must be one of {_BLOCKS}, got {self.block!r}.')
    if self.stem not in _STEMS:
      raise ValueError(f'ResNetConfig.stem must be one of {_STEMS}, got {self.stem!r}.')
    for name in ('stage_sizes', 'stage_widths'):
      value = getattr(self, name)
      if not isinstance(value, tuple) or not value or not all(
          isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(
            f'ResNetConfig.{name} must be a non-empty tuple of positive ints, got {value!r}.')
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError(
          f'ResNetConfig.stage_sizes {self.stage_sizes} and stage_widths {self.stage_widths} '
          'must have the same length (one entry per stage).')
    for name in ('stem_width', 'in_channels', 'image_size'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'ResNetConfig.{name} must be a positive int, got {value!r}.')
    if self.first_stage_stride not in (1, 2):
      raise ValueError(
          f'ResNetConfig.first_stage_stride must be 1 or 2, got {self.first_stage_stride!r}.')
    if not self.width_multiplier > 0:
      raise ValueError(
          f'ResNetConfig.width_multiplier must be positive, got {self.width_multiplier!r}.')
    if self.block == 'bottleneck' and self.width_multiplier == 1.0 and any(
        w % _EXPANSION for w in self.stage_widths):
      raise ValueError(
          f'ResNetConfig.stage_widths {self.stage_widths} must be multiples of {_EXPANSION} for '
          'bottleneck blocks (the inner width is a quarter of the output width).')
    if not 0.0 <= self.bn_momentum < 1.0:
      raise ValueError(f'ResNetConfig.bn_momentum must be in [0, 1), got {self.bn_momentum!r}.')
    if not self.bn_epsilon > 0:
      raise ValueError(f'ResNetConfig.bn_epsilon must be positive, got {self.bn_epsilon!r}.')

  @property
  def stem_channels(self) -> int:
    """Output channels of the stem after the width multiplier."""
    return max(1, round(self.stem_width * self.width_multiplier))

  @property
  def stage_channels(self) -> tuple[int, ...]:
    """Output channels of each stage after the width multiplier."""
    divisor = _EXPANSION if self.block == 'bottleneck' else 1
    return tuple(max(divisor, round(w * self.width_multiplier / divisor) * divisor)
                 for w in self.stage_widths)


PRESETS: dict[str, ResNetConfig] = {
    # The seed's model: ResNet-50 v1.5 with the CIFAR stem, for 32x32 CIFAR-10.
    'full': ResNetConfig(),
    # ResNet-18 (basic blocks), for reference runs and benchmarks.
    'resnet18': ResNetConfig(
        block='basic', stage_sizes=(2, 2, 2, 2), stage_widths=(64, 128, 256, 512)),
    # ResNet-10-style at quarter width (16-128 channels, ~0.3M parameters): an epoch of the 60k
    # 28x28 Fashion-MNIST stand-in at batch 32 takes minutes on 2 CPU cores.
    'small': ResNetConfig(
        block='basic', stage_sizes=(1, 1, 1, 1), stage_widths=(64, 128, 256, 512),
        width_multiplier=0.25, zero_init_last_bn=True),
    # For tests: bottleneck blocks with every feature of `full`, at 1/16 of its width.
    'tiny': ResNetConfig(
        stage_sizes=(1, 1, 1, 1), width_multiplier=1 / 16, zero_init_last_bn=True),
}


def dummy_input(config: ResNetConfig, batch_size: int = 1) -> Array:
  """A zero `image` batch of the configured shape, for `init` and `jax.eval_shape`."""
  return jnp.zeros((batch_size, config.image_size, config.image_size, config.in_channels),
                   jnp.float32)


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free convolution with torch's symmetric `kernel // 2` padding."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 kernel_init=_CONV_INIT, name=name)


def _head(num_classes: int, dtype: Any) -> dict[str, Any]:
  """Arguments of the classification layer; `load_hf_resnet` re-initialises it from these.

  Flax's default initialisation: LeCun normal kernel (variance 1 / fan_in), zero bias. Torch's
  default for `nn.Linear` is uniform with a third of that variance and a non-zero bias.
  """
  return dict(features=num_classes, dtype=dtype, param_dtype=jnp.float32)


class BottleneckBlock(nn.Module):
  """1x1 reduce → 3x3 (stride here in v1.5) → 1x1 expand, plus the (projected) shortcut."""

  features: int
  stride: int
  config: ResNetConfig
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    inner = self.features // _EXPANSION
    stride_1x1, stride_3x3 = (self.stride, 1) if self.config.stride_in_1x1 else (1, self.stride)
    y = _conv(inner, 1, stride_1x1, self.dtype, 'conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(inner, 3, stride_3x3, self.dtype, 'conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = _conv(self.features, 1, 1, self.dtype, 'conv3')(y)
    last_scale = nn.initializers.zeros if self.config.zero_init_last_bn else nn.initializers.ones
    y = self.norm(scale_init=last_scale, name='bn3')(y)
    return nn.relu(y + _shortcut(x, self.features, self.stride, self.norm, self.dtype))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (the first one strided), plus the (projected) shortcut."""

  features: int
  stride: int
  config: ResNetConfig
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = _conv(self.features, 3, self.stride, self.dtype, 'conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.features, 3, 1, self.dtype, 'conv2')(y)
    last_scale = nn.initializers.zeros if self.config.zero_init_last_bn else nn.initializers.ones
    y = self.norm(scale_init=last_scale, name='bn2')(y)
    return nn.relu(y + _shortcut(x, self.features, self.stride, self.norm, self.dtype))


def _shortcut(x: Array, features: int, stride: int, norm: Any, dtype: Any) -> Array:
  """Identity, or a strided 1x1 projection + BatchNorm where the channels or the stride change.

  Called inside a block's compact `__call__`, so the projection's layers belong to that block.
  """
  if x.shape[-1] == features and stride == 1:
    return x
  return norm(name='proj_bn')(_conv(features, 1, stride, dtype, 'proj_conv')(x))


class ResNet(nn.Module):
  """Stem → residual stages → global average pool → linear head; float32 logits.

  Variables: `params` (always float32) and `batch_stats` (the BatchNorm running averages). Training
  (`train=True`) must pass `mutable=['batch_stats']` to `apply`; eval reads the running averages and
  changes nothing. With `config.axis_name` set, training must run inside `pmap`/`shard_map` with
  that axis; `init` need not.

  Attributes:
    config: the architecture (see `PRESETS`).
    num_classes: width of the logits.
    dtype: compute dtype, float32 or bfloat16. BatchNorm statistics and the pooled features are
      float32 either way.
  """

  config: ResNetConfig
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: Array, *, train: bool,
               return_features: bool = False) -> Array | tuple[Array, Array]:
    """Classifies a batch of images.

    Args:
      image: float `[batch, height, width, config.in_channels]`, normalised.
      train: normalise with the batch's statistics (synced over `config.axis_name`) and update the
        running averages; otherwise normalise with the running averages.
      return_features: also return the pooled features, the input of the head.

    Returns:
      float32 logits `[batch, num_classes]`, and with `return_features` also the float32 pooled
      features `[batch, config.stage_channels[-1]]`.
    """
    cfg = self.config
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f'ResNet.num_classes must be a positive int, got {self.num_classes!r}.')
    if jnp.dtype(self.dtype) not in _DTYPES:
      raise ValueError(f'ResNet.dtype must be float32 or bfloat16, got {self.dtype!r}.')
    if image.ndim != 4 or image.shape[-1] != cfg.in_channels:
      raise ValueError(
          f'image must be [batch, height, width, {cfg.in_channels}] (config.in_channels), got '
          f'shape {image.shape}.')

    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=cfg.bn_momentum,
        epsilon=cfg.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
        axis_name=cfg.axis_name)
    x = image.astype(self.dtype)
    if cfg.stem == 'imagenet':
      x = _conv(cfg.stem_channels, 7, 2, self.dtype, 'stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(cfg.stem_channels, 3, 1, self.dtype, 'stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))

    block_cls = BottleneckBlock if cfg.block == 'bottleneck' else BasicBlock
    for i, (size, features) in enumerate(zip(cfg.stage_sizes, cfg.stage_channels)):
      for j in range(size):
        stride = (cfg.first_stage_stride if i == 0 else 2) if j == 0 else 1
        x = block_cls(features, stride, cfg, norm, self.dtype,
                      name=f'stage{i + 1}_block{j + 1}')(x)

    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(**_head(self.num_classes, self.dtype), name='head')(features)
    logits = logits.astype(jnp.float32)
    return (logits, features) if return_features else logits


# --------------------------------------------------------------------------- Hugging Face loading

_HF_BN = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> ResNetConfig:
  """The `ResNetConfig` of a transformers `ResNetConfig` dict (a checkpoint's `config.json`).

  Args:
    hf_config: the parsed `config.json`.
    **overrides: fields that do not change the weights' shapes, e.g. `axis_name`, `image_size`.
  """
  if hf_config.get('model_type') != 'resnet':
    raise ValueError(
        f'config.json has model_type={hf_config.get("model_type")!r}; expected "resnet".')
  if hf_config.get('hidden_act', 'relu') != 'relu':
    raise ValueError(
        f'config.json has hidden_act={hf_config["hidden_act"]!r}; only "relu" is supported.')
  for key in ('depths', 'hidden_sizes', 'embedding_size'):
    if key not in hf_config:
      raise ValueError(f'config.json has no {key!r}.')
  layer_type = hf_config.get('layer_type', 'bottleneck')
  if layer_type not in _BLOCKS:
    raise ValueError(f'config.json has layer_type={layer_type!r}; expected one of {_BLOCKS}.')
  for name in ('stem', 'block', 'stage_sizes', 'stem_width', 'stage_widths', 'width_multiplier',
               'stride_in_1x1', 'first_stage_stride', 'in_channels'):
    if name in overrides:
      raise ValueError(f'{name!r} is fixed by the checkpoint and cannot be overridden.')
  return ResNetConfig(
      block=layer_type,
      stage_sizes=tuple(hf_config['depths']),
      stem_width=hf_config['embedding_size'],
      stage_widths=tuple(hf_config['hidden_sizes']),
      stem='imagenet',
      in_channels=hf_config.get('num_channels', 3),
      image_size=overrides.pop('image_size', 224),
      stride_in_1x1=bool(hf_config.get('downsample_in_bottleneck', False)),
      first_stage_stride=2 if hf_config.get('downsample_in_first_stage', False) else 1,
      **overrides)


def _hf_name(module_path: tuple[str, ...], leaf: str) -> str:
  """The transformers state-dict key (without the `resnet.` prefix) of one Flax variable."""
  *blocks, layer = module_path
  if not blocks:  # The stem: ('stem_conv',) or ('stem_bn',).
    module = 'embedder.embedder.' + ('convolution' if layer == 'stem_conv' else 'normalization')
  else:
    (block,) = blocks  # 'stage{i}_block{j}', 1-based.
    stage, index = (int(part[len(prefix):]) - 1
                    for part, prefix in zip(block.split('_'), ('stage', 'block')))
    base = f'encoder.stages.{stage}.layers.{index}'
    if layer.startswith('proj_'):
      module = f'{base}.shortcut.' + ('convolution' if layer == 'proj_conv' else 'normalization')
    else:  # conv{k} / bn{k} → layer.{k-1}.convolution / .normalization
      kind, k = ('convolution', layer[4:]) if layer.startswith('conv') else (
          'normalization', layer[2:])
      module = f'{base}.layer.{int(k) - 1}.{kind}'
  return f'{module}.{"weight" if leaf == "kernel" else _HF_BN[leaf]}'


def load_hf_resnet(
    path: str | os.PathLike,
    *,
    num_classes: int,
    rng: Array | None = None,
    dtype: Any = jnp.float32,
    **overrides: Any,
) -> tuple[ResNetConfig, dict[str, Any]]:
  """Reads a Hugging Face ResNet checkpoint folder into Flax variables for `ResNet`.

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
    >>> model = ResNet(config, num_classes=10)  # doctest: +SKIP
    >>> logits = model.apply(variables, images, train=False)  # doctest: +SKIP
  """
  config = config_from_hf(_hf.read_config(path), **overrides)
  model = ResNet(config, num_classes, dtype)
  # Shapes only: nothing of the size of ResNet-50 is allocated or computed here.
  shapes = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), dummy_input(config))

  with _hf.SafetensorsReader(path) as reader:
    prefix = 'resnet.' if any(k.startswith('resnet.') for k in reader.keys) else ''
    wanted = {}  # (collection, flax path) → (hf key, torch-layout shape)
    for collection in ('params', 'batch_stats'):
      for key_path, leaf in jax.tree_util.tree_flatten_with_path(shapes[collection])[0]:
        names = tuple(k.key for k in key_path)
        if names[0] == 'head':
          continue
        shape = leaf.shape
        if names[-1] == 'kernel':  # Flax HWIO ← torch OIHW.
          shape = (shape[3], shape[2], shape[0], shape[1])
        wanted[(collection, names)] = (prefix + _hf_name(names[:-1], names[-1]), shape)

    hf_keys = {key for key, _ in wanted.values()}
    missing = sorted(hf_keys - reader.keys)
    if missing:
      raise ValueError(
          f'{reader.file!r} lacks {len(missing)} tensor(s) that the config.json architecture '
          f'needs: {", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}.')
    ignored = (prefix + 'classifier.', 'classifier.')
    unexpected = sorted(k for k in reader.keys - hf_keys
                        if not k.endswith('num_batches_tracked') and not k.startswith(ignored))
    if unexpected:
      raise ValueError(
          f'{reader.file!r} has {len(unexpected)} tensor(s) that the config.json architecture does '
          f'not use: {", ".join(unexpected[:10])}{" ..." if len(unexpected) > 10 else ""}.')

    variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
    for (collection, names), (key, shape) in wanted.items():
      value = reader.get(key, shape)  # Raises, naming the tensor, on a shape mismatch.
      if names[-1] == 'kernel':
        value = value.transpose(2, 3, 1, 0)
      node = variables[collection]
      for name in names[:-1]:
        node = node.setdefault(name, {})
      node[names[-1]] = jnp.asarray(value)

  head_input = jnp.zeros((1, config.stage_channels[-1]), jnp.float32)
  head = nn.Dense(**_head(num_classes, dtype)).init(
      jax.random.key(0) if rng is None else rng, head_input)
  variables['params']['head'] = head['params']
  return config, variables


def num_params(variables: dict[str, Any]) -> int:
  """Number of scalars in `variables['params']` (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables['params']))

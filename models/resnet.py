"""ResNet (v1.5) for image classification.

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

The Hugging Face loader is `models.resnet_hf`.

Parameter counts (`params` only; `batch_stats` are not parameters): ResNet-50 with the ImageNet
stem and 1000 classes has the canonical 25,557,032; with the CIFAR stem and 10 classes (the `full`
preset on CIFAR-10) 23,520,842.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BLOCKS = ("bottleneck", "basic")
_STEMS = ("cifar", "imagenet")
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# He et al. (2015) initialisation with fan_out, as torchvision and transformers initialise convs.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
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

  block: str = "bottleneck"
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  stem_width: int = 64
  stage_widths: tuple[int, ...] = (256, 512, 1024, 2048)
  width_multiplier: float = 1.0
  stem: str = "cifar"
  in_channels: int = 3
  image_size: int = 32
  zero_init_last_bn: bool = False
  stride_in_1x1: bool = False
  first_stage_stride: int = 1
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  def __post_init__(self):
    if self.block not in BLOCKS:
      raise ValueError(f"ResNetConfig.block must be one of {BLOCKS}, got {self.block!r}.")
    if self.stem not in _STEMS:
      raise ValueError(f"ResNetConfig.stem must be one of {_STEMS}, got {self.stem!r}.")
    for name in ("stage_sizes", "stage_widths"):
      value = getattr(self, name)
      if not isinstance(value, tuple) or not value or not all(
          isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        raise ValueError(
            f"ResNetConfig.{name} must be a non-empty tuple of positive ints, got {value!r}.")
    if len(self.stage_sizes) != len(self.stage_widths):
      raise ValueError(
          f"ResNetConfig.stage_sizes {self.stage_sizes} and stage_widths {self.stage_widths} "
          "must have the same length (one entry per stage).")
    for name in ("stem_width", "in_channels", "image_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ResNetConfig.{name} must be a positive int, got {value!r}.")
    if self.first_stage_stride not in (1, 2):
      raise ValueError(
          f"ResNetConfig.first_stage_stride must be 1 or 2, got {self.first_stage_stride!r}.")
    if not self.width_multiplier > 0:
      raise ValueError(
          f"ResNetConfig.width_multiplier must be positive, got {self.width_multiplier!r}.")
    if self.block == "bottleneck" and self.width_multiplier == 1.0 and any(
        w % _EXPANSION for w in self.stage_widths):
      raise ValueError(
          f"ResNetConfig.stage_widths {self.stage_widths} must be multiples of {_EXPANSION} for "
          "bottleneck blocks (the inner width is a quarter of the output width).")
    if not 0.0 <= self.bn_momentum < 1.0:
      raise ValueError(f"ResNetConfig.bn_momentum must be in [0, 1), got {self.bn_momentum!r}.")
    if not self.bn_epsilon > 0:
      raise ValueError(f"ResNetConfig.bn_epsilon must be positive, got {self.bn_epsilon!r}.")

  @property
  def stem_channels(self) -> int:
    """Output channels of the stem after the width multiplier."""
    return max(1, round(self.stem_width * self.width_multiplier))

  @property
  def stage_channels(self) -> tuple[int, ...]:
    """Output channels of each stage after the width multiplier."""
    divisor = _EXPANSION if self.block == "bottleneck" else 1
    return tuple(max(divisor, round(w * self.width_multiplier / divisor) * divisor)
                 for w in self.stage_widths)


PRESETS: dict[str, ResNetConfig] = {
    # The seed's model: ResNet-50 v1.5 with the CIFAR stem, for 32x32 CIFAR-10.
    "full": ResNetConfig(),
    # ResNet-18 (basic blocks), for reference runs and benchmarks.
    "resnet18": ResNetConfig(
        block="basic", stage_sizes=(2, 2, 2, 2), stage_widths=(64, 128, 256, 512)),
    # ResNet-10-style at quarter width (16-128 channels, ~0.3M parameters): an epoch of the 60k
    # 28x28 Fashion-MNIST stand-in at batch 32 takes minutes on 2 CPU cores.
    "small": ResNetConfig(
        block="basic", stage_sizes=(1, 1, 1, 1), stage_widths=(64, 128, 256, 512),
        width_multiplier=0.25, zero_init_last_bn=True),
    # For tests: bottleneck blocks with every feature of `full`, at 1/16 of its width.
    "tiny": ResNetConfig(
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


def head_options(num_classes: int, dtype: Any) -> dict[str, Any]:
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
    y = _conv(inner, 1, stride_1x1, self.dtype, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(inner, 3, stride_3x3, self.dtype, "conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = _conv(self.features, 1, 1, self.dtype, "conv3")(y)
    last_scale = nn.initializers.zeros if self.config.zero_init_last_bn else nn.initializers.ones
    y = self.norm(scale_init=last_scale, name="bn3")(y)
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
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    last_scale = nn.initializers.zeros if self.config.zero_init_last_bn else nn.initializers.ones
    y = self.norm(scale_init=last_scale, name="bn2")(y)
    return nn.relu(y + _shortcut(x, self.features, self.stride, self.norm, self.dtype))


def _shortcut(x: Array, features: int, stride: int, norm: Any, dtype: Any) -> Array:
  """Identity, or a strided 1x1 projection + BatchNorm where the channels or the stride change.

  Called inside a block's compact `__call__`, so the projection's layers belong to that block.
  """
  if x.shape[-1] == features and stride == 1:
    return x
  return norm(name="proj_bn")(_conv(features, 1, stride, dtype, "proj_conv")(x))


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
      raise ValueError(f"ResNet.num_classes must be a positive int, got {self.num_classes!r}.")
    if jnp.dtype(self.dtype) not in _DTYPES:
      raise ValueError(f"ResNet.dtype must be float32 or bfloat16, got {self.dtype!r}.")
    if image.ndim != 4 or image.shape[-1] != cfg.in_channels:
      raise ValueError(
          f"image must be [batch, height, width, {cfg.in_channels}] (config.in_channels), got "
          f"shape {image.shape}.")

    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=cfg.bn_momentum,
        epsilon=cfg.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
        axis_name=cfg.axis_name)
    x = image.astype(self.dtype)
    if cfg.stem == "imagenet":
      x = _conv(cfg.stem_channels, 7, 2, self.dtype, "stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(cfg.stem_channels, 3, 1, self.dtype, "stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))

    block_cls = BottleneckBlock if cfg.block == "bottleneck" else BasicBlock
    for i, (size, features) in enumerate(zip(cfg.stage_sizes, cfg.stage_channels)):
      for j in range(size):
        stride = (cfg.first_stage_stride if i == 0 else 2) if j == 0 else 1
        x = block_cls(features, stride, cfg, norm, self.dtype,
                      name=f"stage{i + 1}_block{j + 1}")(x)

    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(**head_options(self.num_classes, self.dtype), name="head")(features)
    logits = logits.astype(jnp.float32)
    return (logits, features) if return_features else logits


def num_params(variables: dict[str, Any]) -> int:
  """Number of scalars in `variables['params']` (arrays or `jax.ShapeDtypeStruct`s)."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables["params"]))

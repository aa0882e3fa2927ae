"""Tests of models/resnet.py: parity with transformers, parameter counts, BatchNorm, training."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil

import flax.linen as nn
import isolate
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from models import resnet
from models import resnet_hf

TINY = resnet.PRESETS["tiny"]


def _rng_key(seed: int = 0) -> jax.Array:
  # XLA's CPU compiler takes tens of seconds for the threefry bits of a whole model's init on a
  # busy 2-core machine, and a few seconds with the RngBitGenerator ("rbg"); the model is the same.
  return jax.random.key(seed, impl="rbg")


def _shapes(model, config):
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                        resnet.dummy_input(config))


def _random_variables(model, config, seed=0):
  """Variables of the model's exact structure, drawn with NumPy: no XLA compilation.

  For tests that are not about initialisation. The BatchNorm running averages are random too, so
  that eval mode does not normalise with the identity.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:  # bias, mean
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, _shapes(model, config))


def _model(config, num_classes=10, dtype=jnp.float32, seed=0):
  model = resnet.ResNet(config, num_classes, dtype)
  return model, _random_variables(model, config, seed)


def _images(config, batch, seed=1):
  shape = (batch, config.image_size, config.image_size, config.in_channels)
  return jax.random.normal(jax.random.key(seed), shape)


@functools.cache
def _apply(model, *, train, return_features=False):
  """The jitted `apply` (one compilation instead of one per operation), shared between tests."""
  if train:
    return jax.jit(functools.partial(model.apply, train=True, return_features=return_features,
                                     mutable=["batch_stats"]))
  return jax.jit(functools.partial(model.apply, train=False, return_features=return_features))


# ------------------------------------------------------------------------------ sizes and shapes


def _count(config, num_classes):
  return resnet.num_params(_shapes(resnet.ResNet(config, num_classes), config))


def test_resnet50_param_count_is_canonical():
  imagenet = dataclasses.replace(resnet.PRESETS["full"], stem="imagenet", image_size=224)
  assert _count(imagenet, 1000) == 25_557_032
  # The seed's model: CIFAR stem (3x3x3x64 instead of 7x7x3x64) and a 10-class head.
  assert _count(resnet.PRESETS["full"], 10) == 23_520_842


def test_resnet18_param_count():
  # torchvision's resnet18 has 11,689,512 parameters with the ImageNet stem and 1000 classes.
  imagenet = dataclasses.replace(resnet.PRESETS["resnet18"], stem="imagenet", image_size=224)
  assert _count(imagenet, 1000) == 11_689_512


def test_width_multiplier_scales_channels():
  config = dataclasses.replace(resnet.PRESETS["full"], width_multiplier=0.25)
  assert config.stem_channels == 16
  assert config.stage_channels == (64, 128, 256, 512)
  # Bottleneck widths stay multiples of 4 so that the inner width is an integer.
  assert dataclasses.replace(config, width_multiplier=0.1).stage_channels == (24, 52, 104, 204)
  shapes = _shapes(resnet.ResNet(config, 10), config)["params"]
  assert shapes["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
  assert shapes["stage4_block3"]["conv2"]["kernel"].shape == (3, 3, 128, 128)


@pytest.mark.parametrize("channels, size, stem", [(1, 28, "cifar"), (3, 32, "cifar"),
                                                  (3, 224, "imagenet")])
def test_input_channels_and_sizes(channels, size, stem):
  config = dataclasses.replace(TINY, in_channels=channels, image_size=size, stem=stem)
  model, variables = _model(config)
  x = _images(config, 4)
  logits, features = _apply(model, train=False, return_features=True)(variables, x)
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert features.shape == (4, config.stage_channels[-1])
  assert np.all(np.isfinite(logits))


def test_wrong_channel_count_names_image():
  model, variables = _model(TINY)
  with pytest.raises(ValueError, match="image must be"):
    model.apply(variables, jnp.zeros((1, 32, 32, 1)), train=False)


@pytest.mark.parametrize("field, value", [("block", "wide"), ("stem", "vit"),
                                          ("stage_sizes", (3, 4)), ("width_multiplier", 0.0),
                                          ("stage_widths", (256, 512, 1024, 2047)),
                                          ("first_stage_stride", 3), ("bn_momentum", 1.0)])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(resnet.PRESETS["full"], **{field: value})


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model32, variables = _model(TINY)
  model16 = resnet.ResNet(TINY, 10, jnp.bfloat16)
  assert all(leaf.dtype == jnp.float32
             for leaf in jax.tree_util.tree_leaves(_shapes(model16, TINY)))
  x = _images(TINY, 4)
  logits16, _ = _apply(model16, train=False, return_features=True)(variables, x)
  logits32, _ = _apply(model32, train=False, return_features=True)(variables, x)
  assert logits16.dtype == jnp.float32
  scale = float(np.max(np.abs(logits32)))
  assert scale > 0.1
  np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)


@pytest.mark.parametrize("block, last", [("bottleneck", "bn3"), ("basic", "bn2")])
def test_zero_init_last_bn(block, last):
  # One stage is enough, and keeps the (real) initialisation cheap to compile.
  config = resnet.ResNetConfig(block=block, stage_sizes=(1,), stage_widths=(16,), stem_width=4,
                               image_size=8)
  for zero, expected in ((True, 0.0), (False, 1.0)):
    config = dataclasses.replace(config, zero_init_last_bn=zero)
    variables = resnet.ResNet(config, 10).init(_rng_key(), resnet.dummy_input(config),
                                               train=False)
    params = variables["params"]["stage1_block1"]
    np.testing.assert_array_equal(params[last]["scale"], expected)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)  # Only the last one.
    np.testing.assert_array_equal(params["proj_bn"]["scale"], 1.0)


# ------------------------------------------------------------------------------------- BatchNorm


def test_running_stats_update_in_train_mode_only():
  model, variables = _model(TINY)
  x = _images(TINY, 16) * 3.0 + 1.0

  train_logits, updated = _apply(model, train=True)(variables, x)
  # The stem's running mean moves by (1 - momentum) toward the batch mean of the stem conv output.
  conv = nn.Conv(TINY.stem_channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  stem_out = conv.apply({"params": variables["params"]["stem_conv"]}, x)
  np.testing.assert_allclose(
      updated["batch_stats"]["stem_bn"]["mean"],
      0.9 * variables["batch_stats"]["stem_bn"]["mean"] + 0.1 * stem_out.mean(axis=(0, 1, 2)),
      rtol=1e-5, atol=1e-6)
  changed = jax.tree_util.tree_map(
      lambda a, b: not np.allclose(a, b), variables["batch_stats"], updated["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))

  eval_apply = jax.jit(functools.partial(model.apply, train=False, mutable=["batch_stats"]))
  logits, unchanged = eval_apply(variables, x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables["batch_stats"],
                         unchanged["batch_stats"])
  # Another batch around the same 8 examples: their eval logits stay (running averages), their
  # train logits change (batch statistics).
  other = jnp.concatenate([x[:8], -x[:8]])
  np.testing.assert_allclose(eval_apply(variables, other)[0][:8], logits[:8], rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(_apply(model, train=True)(variables, other)[0][:8], train_logits[:8],
                         atol=1e-3)


@pytest.fixture(scope="module")
def global_batch():
  """Train-mode stats of a 16-image batch on one device: what the replicas must reproduce."""
  config = dataclasses.replace(TINY, axis_name="batch")
  model, variables = _model(config)
  x = _images(config, 16) * 2.0 + 0.5
  one_device = resnet.ResNet(TINY, 10)
  logits, updated = _apply(one_device, train=True)(variables, x)
  return model, variables, x, logits, updated["batch_stats"]


def _assert_tree_close(actual, expected):
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5), actual, expected)


def _train_stats(model):
  def step(variables, x):
    logits, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updated["batch_stats"]
  return step


@pytest.mark.slow  # a fresh process: imports, and the reference and both launchers compile
def test_pmap_and_shard_map_sync_batch_stats_over_axis_name(request):
  # 8 devices sharing 2 cores, and a cross-device all-reduce in every BatchNorm: the multi-host
  # tests' XLA flags, in a process of their own. One process for both launchers: it compiles the
  # one-device reference once.
  if isolate.rerun(request, devices=8):
    return
  model, variables, x, expected_logits, expected = request.getfixturevalue("global_batch")
  assert jax.local_device_count() == 8, "isolate.rerun sets 8 host CPU devices"

  # pmap.
  shards = x.reshape(8, 2, *x.shape[1:])
  logits, stats = jax.pmap(_train_stats(model), axis_name="batch", in_axes=(None, 0))(
      variables, shards)
  np.testing.assert_allclose(logits.reshape(16, -1), expected_logits, rtol=1e-4, atol=1e-5)
  for replica in range(8):
    _assert_tree_close(jax.tree_util.tree_map(lambda s: s[replica], stats), expected)

  # Control: without the axis each replica normalises its 2 images alone, and the stats differ.
  local = resnet.ResNet(dataclasses.replace(model.config, axis_name=None), 10)
  _, local_stats = jax.pmap(_train_stats(local), axis_name="batch", in_axes=(None, 0))(
      variables, shards)
  assert not np.allclose(local_stats["stage4_block1"]["bn2"]["var"][0],
                         expected["stage4_block1"]["bn2"]["var"], rtol=1e-2)

  # shard_map over a mesh of the 8 devices.
  mesh = Mesh(np.array(jax.local_devices()), ("batch",))
  logits, stats = jax.jit(jax.shard_map(
      _train_stats(model), mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P())))(
          variables, x)
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-5)
  _assert_tree_close(stats, expected)


def test_a_few_train_steps_lower_the_loss():
  # Two stages of bottlenecks: the gradient's compilation is the cost of this test.
  config = dataclasses.replace(TINY, in_channels=1, image_size=28, stage_sizes=(1, 1),
                               stage_widths=(256, 512))
  model, variables = _model(config)
  x = _images(config, 16)
  y = jnp.arange(16) % 10
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(params):
      logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updated
    (loss, updated), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), updated["batch_stats"], opt_state, loss

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  losses = []
  for _ in range(8):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  # Fitting one fixed batch: every step lowers the loss, by ~20% over the 8 steps.
  assert np.all(np.diff(losses) < 0), losses
  assert losses[-1] < 0.9 * losses[0], losses


# ------------------------------------------------------------------------- Hugging Face checkpoint


def _hf_checkpoint(folder, *, layer_type="bottleneck", classifier=False, **kwargs):
  """Saves a small random transformers ResNet (random BatchNorm too) and returns the torch model."""
  import torch
  import transformers

  torch.manual_seed(0)
  hidden_sizes = [16, 32, 64, 128] if layer_type == "bottleneck" else [8, 16, 24, 32]
  hf_config = transformers.ResNetConfig(
      num_channels=3, embedding_size=8, hidden_sizes=hidden_sizes, depths=[1, 2, 1, 1],
      layer_type=layer_type, num_labels=5, **kwargs)
  cls = (transformers.ResNetForImageClassification if classifier else transformers.ResNetModel)
  model = cls(hf_config).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  model.save_pretrained(folder)
  return model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("hf_resnet")
  _hf_checkpoint(folder)
  return folder


@pytest.mark.parametrize("variant, size", [
    # v1.5, as microsoft/resnet-50. At an even size torch's (1, 1) padding and Flax's 'SAME'
    # (0, 1) at stride 2 differ; at an odd one the max-pool's and the convs' edges are exercised.
    (dict(), 64),
    (dict(), 45),
    (dict(downsample_in_bottleneck=True), 64),  # v1: stride on the first 1x1.
    (dict(layer_type="basic", downsample_in_first_stage=True), 64),
    (dict(classifier=True), 64),  # ResNetForImageClassification: 'resnet.'-prefixed keys.
])
def test_parity_with_transformers(tmp_path, variant, size):
  import torch

  torch_model = _hf_checkpoint(tmp_path, **variant)
  config, variables = resnet_hf.load_hf_resnet(tmp_path, num_classes=3, rng=_rng_key())
  assert config.stem == "imagenet"
  assert config.stride_in_1x1 == variant.get("downsample_in_bottleneck", False)
  images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)

  with torch.no_grad():
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2))
    base = torch_model.resnet if variant.get("classifier") else torch_model
    expected = base(pixels).pooler_output.numpy()[:, :, 0, 0]
  model = resnet.ResNet(config, 3)
  logits, features = _apply(model, train=False, return_features=True)(variables, images)
  assert logits.shape == (2, 3)
  assert np.std(expected) > 0.1  # The comparison is not between two near-constant vectors.
  assert np.max(np.abs(features - expected)) <= 1e-4


def test_load_hf_reinitialises_head(hf_folder):
  config, first = resnet_hf.load_hf_resnet(hf_folder, num_classes=10, rng=_rng_key(1))
  _, second = resnet_hf.load_hf_resnet(hf_folder, num_classes=10, rng=_rng_key(2),
                                    axis_name="batch", image_size=32)
  assert first["params"]["head"]["kernel"].shape == (config.stage_channels[-1], 10)
  assert not np.allclose(first["params"]["head"]["kernel"], second["params"]["head"]["kernel"])
  np.testing.assert_array_equal(first["params"]["stem_conv"]["kernel"],
                                second["params"]["stem_conv"]["kernel"])
  # The loaded variables have exactly the structure of a freshly initialised model.
  model = resnet.ResNet(config, 10)
  fresh = _shapes(model, config)
  assert jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(first)


def _edited_copy(src, dst, edit):
  from safetensors.numpy import load_file
  from safetensors.numpy import save_file

  shutil.copy(src / "config.json", dst / "config.json")
  tensors = load_file(src / "model.safetensors")
  edit(tensors)
  save_file(tensors, dst / "model.safetensors")
  return dst


def test_load_hf_names_missing_tensor(hf_folder, tmp_path):
  name = "encoder.stages.1.layers.1.layer.2.normalization.running_var"
  folder = _edited_copy(hf_folder, tmp_path, lambda t: t.pop(name))
  with pytest.raises(ValueError, match=name):
    resnet_hf.load_hf_resnet(folder, num_classes=10)


def test_load_hf_names_misshaped_tensor(hf_folder, tmp_path):
  name = "encoder.stages.2.layers.0.layer.1.convolution.weight"

  def edit(tensors):
    tensors[name] = np.zeros((16, 16, 5, 5), np.float32)

  folder = _edited_copy(hf_folder, tmp_path, edit)
  with pytest.raises(ValueError, match=f"{name}.*shape"):
    resnet_hf.load_hf_resnet(folder, num_classes=10)


def test_load_hf_names_unexpected_tensor(hf_folder, tmp_path):
  name = "encoder.stages.3.layers.1.layer.0.convolution.weight"

  def edit(tensors):
    tensors[name] = np.zeros((32, 128, 1, 1), np.float32)

  folder = _edited_copy(hf_folder, tmp_path, edit)
  with pytest.raises(ValueError, match=name):
    resnet_hf.load_hf_resnet(folder, num_classes=10)


def test_load_hf_rejects_bad_config_and_stem_override(hf_folder, tmp_path):
  with pytest.raises(ValueError, match="'stem' is fixed by the checkpoint"):
    resnet_hf.load_hf_resnet(hf_folder, num_classes=10, stem="cifar")
  config = json.loads((hf_folder / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
  with pytest.raises(ValueError, match="model_type"):
    resnet_hf.load_hf_resnet(tmp_path, num_classes=10)
  shutil.copy(hf_folder / "config.json", tmp_path / "config.json")
  with pytest.raises(ValueError, match="No model.safetensors"):
    resnet_hf.load_hf_resnet(tmp_path, num_classes=10)

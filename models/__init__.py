"""The suite's models, and the registry that `train/` and `benchmarks/` pick them from.

    model, spec = models.get('resnet', size='small', num_classes=10, depth=18, stem='cifar')
    variables = spec.init(jax.random.key(0))   # with pretrained weights if a checkpoint was given
    logits = model.apply(variables, **spec.example_batch(4), train=False)

`get` returns a Flax linen module and a `ModelSpec` that describes its inputs (names, per-example
shapes, dtypes: the keys of the data pipeline's batches), whether it keeps BatchNorm state, and
how to initialise its variables. Every model takes its inputs as keyword arguments named as in the
spec, plus `train=...`, and returns float32 logits `[batch, num_classes]`.

The model modules are imported only when asked for, so that importing `models` stays cheap and a
model's dependencies (e.g. safetensors for a checkpoint) are needed only by those who use it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['InputSpec', 'ModelSpec', 'get', 'names', 'sizes']

_DTYPES = {'float32': jnp.dtype(jnp.float32), 'bfloat16': jnp.dtype(jnp.bfloat16)}


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """One input of a model: its keyword name, per-example shape (no batch axis) and dtype."""

  name: str
  shape: tuple[int, ...]
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a training loop needs to know about a model besides the module itself.

  Attributes:
    name: the registry name (`'bert'`, `'resnet'`, `'lstm_attention'`).
    size: the preset the config started from.
    config: the model's resolved config dataclass (preset + overrides, or the checkpoint's).
    num_classes: width of the logits.
    dtype: compute dtype; params are float32.
    inputs: the model's inputs in call order.
    has_batch_stats: the model keeps BatchNorm running averages in the `batch_stats` collection, so
      training applies it with `mutable=['batch_stats']` and checkpoints must save that collection.
    checkpoint: the pretrained weights that `init` loads, if any.
  """

  name: str
  size: str
  config: Any
  num_classes: int
  dtype: Any
  inputs: tuple[InputSpec, ...]
  has_batch_stats: bool
  checkpoint: str | None
  model: Any = dataclasses.field(repr=False, compare=False)
  # (rng, random init) -> variables; None when there is nothing pretrained to load.
  _load: Callable[[jax.Array, Callable[[], Any]], Any] | None = dataclasses.field(
      default=None, repr=False, compare=False)

  @property
  def input_names(self) -> tuple[str, ...]:
    return tuple(spec.name for spec in self.inputs)

  def shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The inputs of a batch as `ShapeDtypeStruct`s, for `jax.eval_shape` and AOT lowering."""
    return {s.name: jax.ShapeDtypeStruct((batch_size, *s.shape), s.dtype) for s in self.inputs}

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    """A valid batch of the right shapes: zeros, with every sequence full length and unmasked."""
    batch = {s.name: np.zeros((batch_size, *s.shape), s.dtype) for s in self.inputs}
    if 'attention_mask' in batch:
      batch['attention_mask'][:] = 1
    if 'lengths' in batch:
      batch['lengths'][:] = self.shapes(1)['token_ids'].shape[1]
    return batch

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """The model's variables: random from `rng`, with the checkpoint's weights where it has them.

    `rng` also initialises the parts that a checkpoint does not hold (a new classification head),
    so different seeds give different heads on the same pretrained backbone.
    """
    random_init = lambda: _init_variables(self.model, rng, self.example_batch(1))
    if self._load is None:
      return random_init()
    return self._load(rng, random_init)


@functools.partial(jax.jit, static_argnums=0)
def _init_variables(model: Any, rng: jax.Array, batch: dict[str, Any]) -> dict[str, Any]:
  params_rng, dropout_rng = jax.random.split(rng)
  return model.init({'params': params_rng, 'dropout': dropout_rng}, **batch, train=False)


# --- The registry ---------------------------------------------------------------------------------


def names() -> tuple[str, ...]:
  """The registered model names."""
  return tuple(sorted(_BUILDERS))


def sizes(name: str) -> tuple[str, ...]:
  """The presets of model `name` (each model has at least `full`, `small` and `tiny`)."""
  return tuple(_module(name).PRESETS)


def get(name: str, size: str = 'full', *, num_classes: int, dtype: Any = jnp.float32,
        checkpoint: str | os.PathLike | None = None, seq_len: int | None = None,
        **overrides: Any) -> tuple[Any, ModelSpec]:
  """Builds model `name` at preset `size` and describes it.

  Args:
    name: one of `names()`: `'bert'`, `'resnet'` or `'lstm_attention'`.
    size: one of `sizes(name)`; for BERT also `'bert-base'` and `'minilm-l6'`.
    num_classes: width of the logits.
    dtype: compute dtype, `'float32'`/`'bfloat16'` or the jnp dtype. Params are always float32.
    checkpoint: pretrained weights, which `ModelSpec.init` loads.
      - `bert`: a Hugging Face BERT folder (`config.json` + `model.safetensors`); its config
        replaces the preset's.
      - `resnet`: a Hugging Face ResNet folder (`microsoft/resnet-50` format); its config (ImageNet
        stem) replaces the preset's; `image_size`, `axis_name` and other non-shape fields can still
        be overridden.
      - `lstm_attention`: the embedding table only: a `.npy` `[vocab, dim]` matrix aligned with the
        vocabulary, or a BERT folder, whose WordPiece table (and `[UNK]` id) is taken.
    seq_len: sequence length of the text models' inputs (BERT: 128, LSTM: 256 by default).
    **overrides: fields of the model's config dataclass, e.g. `hidden_dropout=0.2` (BERT),
      `vocab_size=20000` (LSTM), `axis_name='batch'` (ResNet). ResNet also takes `depth` (10, 18,
      34, 50, 101 or 152: block type and stage sizes), `stem` and `width` (the width multiplier).

  Returns:
    `(model, spec)`: the linen module and its `ModelSpec`.

  Raises:
    ValueError: for an unknown name, preset or config field, or a bad value; the message lists what
      is known.
  """
  module = _module(name)  # Raises for an unknown name, listing the known ones.
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  dtype = _dtype(dtype)
  if size not in module.PRESETS:
    raise ValueError(
        f'Unknown size {size!r} for model {name!r}; known sizes: {", ".join(module.PRESETS)}.')
  checkpoint = None if checkpoint is None else os.fspath(checkpoint)
  if checkpoint is not None and not os.path.exists(checkpoint):
    raise ValueError(f'checkpoint {checkpoint!r} does not exist.')
  if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
    raise ValueError(f'seq_len must be a positive int, got {seq_len!r}.')
  return _BUILDERS[name](module, name=name, size=size, num_classes=num_classes, dtype=dtype,
                         checkpoint=checkpoint, seq_len=seq_len, overrides=overrides)


def _module(name: str) -> Any:
  if name not in _BUILDERS:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(names())}.')
  return importlib.import_module(f'models.{name}')


def _dtype(dtype: Any) -> Any:
  try:
    key = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  except TypeError:
    key = None
  if key not in _DTYPES:
    raise ValueError(f'dtype must be one of {", ".join(_DTYPES)}, got {dtype!r}.')
  return _DTYPES[key]


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


def _spec(model: Any, *, name: str, size: str, num_classes: int, dtype: Any,
          checkpoint: str | None, inputs: tuple[InputSpec, ...], has_batch_stats: bool = False,
          load: Callable[..., Any] | None = None) -> tuple[Any, ModelSpec]:
  return model, ModelSpec(
      name=name, size=size, config=model.config, num_classes=num_classes, dtype=dtype,
      inputs=inputs, has_batch_stats=has_batch_stats, checkpoint=checkpoint, model=model,
      _load=load)


def _build_bert(bert: Any, *, size: str, num_classes: int, dtype: Any, checkpoint: str | None,
                seq_len: int | None, overrides: dict[str, Any], name: str) -> tuple[Any, ModelSpec]:
  load = None
  if checkpoint is None:
    config = _replace(bert.PRESETS[size], overrides, name)
  else:
    from models import _hf  # pylint: disable=g-import-not-at-top

    source = os.path.join(checkpoint, _hf.CONFIG_FILE)
    checkpoint_config = bert.config_from_hf(_hf.read_config(checkpoint), source=source)
    config = _replace(checkpoint_config, overrides, name)

    def load(rng, random_init):
      del random_init  # The checkpoint holds everything but the head, which rng initialises.
      _, variables = bert.load_hf_bert(checkpoint, num_classes=num_classes, dtype=dtype, rng=rng)
      return variables

  seq_len = min(128, config.max_position_embeddings) if seq_len is None else seq_len
  if seq_len > config.max_position_embeddings:
    raise ValueError(
        f'seq_len={seq_len} is more than max_position_embeddings='
        f'{config.max_position_embeddings} of this BERT.')
  inputs = tuple(InputSpec(key, (seq_len,), np.dtype(np.int32))
                 for key in ('input_ids', 'attention_mask', 'token_type_ids'))
  model = bert.BertClassifier(config, num_classes=num_classes, dtype=dtype)
  if checkpoint is not None:
    reference = bert.BertClassifier(checkpoint_config, num_classes=num_classes, dtype=dtype)
    batch = {s.name: jnp.zeros((1, *s.shape), s.dtype) for s in inputs}
    if not _same_param_shapes(model, reference, batch):
      raise ValueError(
          f'Overrides {sorted(overrides)} change the shapes of the checkpoint {checkpoint!r}; only '
          'fields such as hidden_dropout and attention_dropout can be overridden with it.')
  return _spec(model, name=name, size=size, num_classes=num_classes, dtype=dtype,
               checkpoint=checkpoint, inputs=inputs, load=load)


# ResNet depth -> (block, stage sizes, stage widths), as in He et al. (2016); 10 is the usual
# one-block-per-stage reduction of ResNet-18.
_RESNET_DEPTHS = {
    10: ('basic', (1, 1, 1, 1), (64, 128, 256, 512)),
    18: ('basic', (2, 2, 2, 2), (64, 128, 256, 512)),
    34: ('basic', (3, 4, 6, 3), (64, 128, 256, 512)),
    50: ('bottleneck', (3, 4, 6, 3), (256, 512, 1024, 2048)),
    101: ('bottleneck', (3, 4, 23, 3), (256, 512, 1024, 2048)),
    152: ('bottleneck', (3, 8, 36, 3), (256, 512, 1024, 2048)),
}


def _build_resnet(resnet: Any, *, size: str, num_classes: int, dtype: Any,
                  checkpoint: str | None, seq_len: int | None, overrides: dict[str, Any],
                  name: str) -> tuple[Any, ModelSpec]:
  if seq_len is not None:
    raise ValueError('seq_len applies to the text models only; ResNet takes image_size.')
  overrides = dict(overrides)
  if 'width' in overrides:
    if 'width_multiplier' in overrides:
      raise ValueError('Give either width or width_multiplier, not both.')
    overrides['width_multiplier'] = overrides.pop('width')
  if 'depth' in overrides:
    depth = overrides.pop('depth')
    if depth not in _RESNET_DEPTHS:
      raise ValueError(
          f'ResNet depth {depth!r} is not one of {", ".join(map(str, _RESNET_DEPTHS))}.')
    clash = sorted({'block', 'stage_sizes', 'stage_widths'} & set(overrides))
    if clash:
      raise ValueError(f'depth sets {clash} itself; give depth or those fields, not both.')
    block, stage_sizes, stage_widths = _RESNET_DEPTHS[depth]
    overrides.update(block=block, stage_sizes=stage_sizes, stage_widths=stage_widths)

  load = None
  if checkpoint is None:
    config = _replace(resnet.PRESETS[size], overrides, name)
  else:
    from models import _hf  # pylint: disable=g-import-not-at-top

    _check_fields(resnet.PRESETS[size], overrides, name)
    config = resnet.config_from_hf(_hf.read_config(checkpoint), **overrides)

    def load(rng, random_init):
      del random_init  # The checkpoint holds everything but the head, which rng initialises.
      _, variables = resnet.load_hf_resnet(checkpoint, num_classes=num_classes, rng=rng,
                                           dtype=dtype, **overrides)
      return variables

  inputs = (InputSpec('image', (config.image_size, config.image_size, config.in_channels),
                      np.dtype(np.float32)),)
  model = resnet.ResNet(config, num_classes=num_classes, dtype=dtype)
  return _spec(model, name=name, size=size, num_classes=num_classes, dtype=dtype,
               checkpoint=checkpoint, inputs=inputs, has_batch_stats=True, load=load)


def _build_lstm_attention(lstm: Any, *, size: str, num_classes: int, dtype: Any,
                          checkpoint: str | None, seq_len: int | None, overrides: dict[str, Any],
                          name: str) -> tuple[Any, ModelSpec]:
  load = None
  if checkpoint is None:
    config = _replace(lstm.PRESETS[size], overrides, name)
  else:
    _check_fields(lstm.PRESETS[size], overrides, name)
    matrix = lstm.read_pretrained_embeddings(checkpoint)
    config = lstm.config_for_embeddings(lstm.PRESETS[size], matrix, source=checkpoint,
                                        **overrides)
    load = lambda rng, random_init: lstm.set_embedding(random_init(), matrix)

  seq_len = 256 if seq_len is None else seq_len
  inputs = (InputSpec('token_ids', (seq_len,), np.dtype(np.int32)),
            InputSpec('lengths', (), np.dtype(np.int32)))
  model = lstm.LSTMAttentionClassifier(config, num_classes=num_classes, dtype=dtype)
  return _spec(model, name=name, size=size, num_classes=num_classes, dtype=dtype,
               checkpoint=checkpoint, inputs=inputs, load=load)


_BUILDERS: dict[str, Callable[..., tuple[Any, ModelSpec]]] = {
    'bert': _build_bert,
    'resnet': _build_resnet,
    'lstm_attention': _build_lstm_attention,
}

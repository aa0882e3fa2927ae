"""Model families: one entry per model, holding all that `train/` and `benchmarks/` need of it.

A `Family` is the model's side of a task, in the manner of AlgoPerf's `Workload`: its inputs
(names, shapes, dtypes), how text or images become those inputs, the model options that follow from
the data (vocabulary size, image shape, ...), its presets, and how to build it. The training loop,
the data pipeline, the task registry and the benchmarks ask the family; none of them dispatches on
the model's name. Adding a model is one `register` call:

    models.register(models.Family(
        name='mlp', module='my_models.mlp', build=build_mlp, kind='image',
        inputs=(models.InputSpec('image', ('image_size', 'image_size', 'in_channels'),
                                 np.float32),),
        model_options=lambda facts: {'image_size': facts.image_shape[0],
                                     'in_channels': facts.image_shape[2]}))

after which `models.get('mlp', ...)`, `--model mlp` and `tasks.Task(..., model='mlp')` work.

This module imports jax, numpy and nothing of the model code: a family's `module` is imported only
when the family is first built or its presets are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import functools
import importlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.checkpoints import PACKAGE_PREFIX  # noqa: F401 (the registry's name for it)
from models.checkpoints import resolve_checkpoint

__all__ = ["DataFacts", "Family", "InputSpec", "ModelSpec", "TextInputs", "family", "get",
           "names", "register", "sizes"]

_DTYPES = {"float32": jnp.dtype(jnp.float32), "bfloat16": jnp.dtype(jnp.bfloat16)}
KINDS = ("image", "text")
# Batch keys besides the model's inputs: the labels, and evaluation's mask of padded examples.
RESERVED = ("label", "mask")

# A dimension of an input: an int, or a name that the built model resolves: `'seq_len'` (the
# text models' sequence length) or a field of the model's config, e.g. `'image_size'`.
Dim = int | str


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """One input of a model: its keyword name, per-example shape (no batch axis) and dtype.

  A `Family` declares its inputs with named dimensions where they depend on the model (`'seq_len'`
  or a config field); the `ModelSpec` of a built model holds them resolved to ints.

  Attributes:
    name: the keyword the model takes it as, and the data pipeline's batch key.
    shape: the per-example shape.
    dtype: its NumPy dtype.
    fill: the value of every element in `ModelSpec.example_batch`, chosen so that the example is
      a valid input: 1 for an attention mask, `'seq_len'` for sequence lengths, else 0.
    vocab_ids: holds token ids below the config's `vocab_size` (the benchmarks draw random ones).
  """

  name: str
  shape: tuple[Dim, ...]
  dtype: np.dtype
  fill: Dim = 0
  vocab_ids: bool = False

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(self.shape))
    object.__setattr__(self, "dtype", np.dtype(self.dtype))

  def resolve(self, dim: Callable[[str], int]) -> InputSpec:
    """This input with every named dimension (and `fill`) replaced by `dim(name)`."""
    value = lambda d: dim(d) if isinstance(d, str) else d
    return dataclasses.replace(self, shape=tuple(value(d) for d in self.shape),
                               fill=value(self.fill))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a training loop needs to know about a model besides the module itself.

  Attributes:
    name: the family's name (`'bert'`, `'resnet'`, `'lstm_attention'`).
    size: the preset the config started from.
    config: the model's resolved config dataclass (preset + overrides, or the checkpoint's).
    num_classes: width of the logits.
    dtype: compute dtype; params are float32.
    inputs: the model's inputs in call order, with every dimension resolved.
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
    """A valid batch of the right shapes: each input at its `fill` (full length, unmasked)."""
    return {s.name: np.full((batch_size, *s.shape), s.fill, s.dtype) for s in self.inputs}

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
  return model.init({"params": params_rng, "dropout": dropout_rng}, **batch, train=False)


@dataclasses.dataclass(frozen=True)
class TextInputs:
  """How a text family's inputs come from text: the tokenisation it takes, and its defaults.

  Attributes:
    to_inputs: `(ids, lengths, segment_b) -> {input name: array}`: the model's inputs from a
      batch of tokenised text: ids int32 [B, L] (padded), lengths int32 [B], and for text pairs
      segment_b int32 [B], the position where the second text starts (else None).
    max_len: the default tokens per example (the data's `max_len`, `models.get`'s `seq_len`).
    tokens: the tokenizer kinds it takes (`'words'`, `'wordpiece'`), its default first.
    special_tokens: WordPiece ids come with BERT's specials: [CLS] text [SEP] (text_b [SEP]).
    pairs: it reads two texts per example (a source with `text_b`); else such sources are refused.
    longest: the largest `max_len` that the data's options may ask for (BERT: 512 positions).
    positions: the config field that bounds `seq_len` once the model is built, and caps the
      default `max_len` (BERT: `max_position_embeddings`).
  """

  to_inputs: Callable[[np.ndarray, np.ndarray, np.ndarray | None], dict[str, np.ndarray]]
  max_len: int
  tokens: tuple[str, ...] = ("words", "wordpiece")
  special_tokens: bool = False
  pairs: bool = False
  longest: int | None = None
  positions: str | None = None


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What a run knows when it builds the model, for the model options that follow from it.

  Attributes:
    num_classes: classes of the data (the logits' width; `models.get` takes it directly).
    image_shape: (height, width, channels) of image data, else None.
    vocab_size, pad_id, unk_id: of the tokenizer that the text was tokenised with, else None.
    checkpoint: the pretrained weights the run starts from (`model.checkpoint`), else None.
    axis_name: the name of the data-parallel axis that the train step maps over (BatchNorm
      averages its statistics over it).
  """

  num_classes: int
  image_shape: tuple[int, int, int] | None = None
  vocab_size: int | None = None
  pad_id: int | None = None
  unk_id: int | None = None
  checkpoint: str | None = None
  axis_name: str | None = None


def _no_options(facts: DataFacts) -> dict[str, Any]:
  del facts
  return {}


@dataclasses.dataclass(frozen=True)
class Family:
  """One model and all that the suite needs to train it on any data source of its kind.

  Attributes:
    name: the registry name: `models.get`'s, `Task.model`, the CLI's `--model`.
    module: the module that defines the model and its `PRESETS` (a dict: size -> config, with at
      least `full`, `small` and `tiny`); imported when first needed, so that importing `models`
      stays cheap and a model's dependencies are needed only by its users.
    build: `build(family, *, size, num_classes, dtype, checkpoint, overrides)` returns
      `(model, config, load)`: the linen module (called with the inputs as keywords and
      `train=...`, returning float32 logits [batch, num_classes]), its resolved config, and
      `load(rng, random_init) -> variables` for pretrained weights (None without). `checkpoint`
      exists when given; `overrides` are the config fields asked for, which `build` checks.
    kind: the data it reads, `'text'` or `'image'`.
    inputs: the model's inputs in call order, dimensions named where the model decides them.
      An image family has exactly one, which receives the normalised images.
    text: how text becomes the inputs, and the text options' defaults (text families only).
    model_options: `DataFacts -> {config field: value}`: the options that follow from the data,
      e.g. the vocabulary size or the image shape; a run's own model options override them.
    checkpoint_data_options: `(checkpoint, given data options) -> extra data options` that a
      pretrained checkpoint fixes (BERT: its vocab.txt); it raises `ValueError` when the
      checkpoint lacks what it needs.
    has_batch_stats: the model keeps BatchNorm statistics (see `ModelSpec`).
    benchmark_classes: the logits' width that `benchmarks/perf/model_speed.py` measures it at
      (the seed's
      data set for the model: AG News 4, CIFAR-10 10, IMDb 2).
    title: the model's name in messages (`'BERT'`); defaults to `name`.
    description: one line for listings.
  """

  name: str
  module: str
  build: Callable[..., tuple[Any, Any, Callable[..., Any] | None]]
  kind: str
  inputs: tuple[InputSpec, ...]
  text: TextInputs | None = None
  model_options: Callable[[DataFacts], dict[str, Any]] = _no_options
  checkpoint_data_options: Callable[[str, Mapping[str, Any]], dict[str, Any]] | None = None
  has_batch_stats: bool = False
  benchmark_classes: int = 2
  title: str = ""
  description: str = ""

  def __post_init__(self):
    object.__setattr__(self, "inputs", tuple(self.inputs))
    if not self.title:
      object.__setattr__(self, "title", self.name)
    where = f"Family {self.name!r}"
    if self.kind not in KINDS:
      raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}.")
    if not self.inputs or not all(isinstance(s, InputSpec) for s in self.inputs):
      raise ValueError(f"{where}: inputs must be a non-empty tuple of InputSpec.")
    if len(set(self.input_names)) != len(self.inputs) or set(self.input_names) & set(RESERVED):
      raise ValueError(f"{where}: input names {self.input_names} must be distinct and none of "
                       f"{RESERVED} (keys that the data pipeline adds to batches).")
    if (self.kind == "text") != (self.text is not None):
      raise ValueError(f"{where}: a text family needs text=TextInputs(...), and only it.")
    if self.kind == "image" and len(self.inputs) != 1:
      raise ValueError(f"{where}: an image family takes exactly one input (the images), got "
                       f"{self.input_names}.")

  @property
  def input_names(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.inputs)

  def load(self) -> Any:
    """The model's module (imported on first use)."""
    return importlib.import_module(self.module)

  @property
  def presets(self) -> dict[str, Any]:
    """size -> config dataclass."""
    return self.load().PRESETS

  def seq_len(self, config: Any, seq_len: int | None) -> int | None:
    """The sequence length of a built text model: `seq_len`, else the default; None for images."""
    if self.text is None:
      return None
    limit = None if self.text.positions is None else getattr(config, self.text.positions)
    if seq_len is None:
      return self.text.max_len if limit is None else min(self.text.max_len, limit)
    if limit is not None and seq_len > limit:
      raise ValueError(f"seq_len={seq_len} is more than {self.text.positions}={limit} of this "
                       f"{self.title}.")
    return seq_len

  def resolved_inputs(self, config: Any, seq_len: int | None) -> tuple[InputSpec, ...]:
    """The inputs of the model built with `config` at `seq_len`, every dimension an int."""
    dim = lambda name: seq_len if name == "seq_len" else getattr(config, name)
    return tuple(s.resolve(dim) for s in self.inputs)


# --- The registry ---------------------------------------------------------------------------------

_FAMILIES: dict[str, Family] = {}


def register(entry: Family) -> Family:
  """Adds a model family; its name must be new."""
  if not isinstance(entry, Family):
    raise TypeError(f"register takes a models.Family, got {type(entry).__name__}.")
  if entry.name in _FAMILIES:
    raise ValueError(f"model family {entry.name!r} is registered twice.")
  _FAMILIES[entry.name] = entry
  return entry


def names() -> tuple[str, ...]:
  """The registered model families' names, sorted."""
  return tuple(sorted(_FAMILIES))


def family(name: str) -> Family:
  """The family registered as `name`; the error lists the known ones."""
  if name not in _FAMILIES:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(names())}.')
  return _FAMILIES[name]


def sizes(name: str) -> tuple[str, ...]:
  """The presets of model `name` (each model has at least `full`, `small` and `tiny`)."""
  return tuple(family(name).presets)


def get(name: str, size: str = "full", *, num_classes: int, dtype: Any = jnp.float32,
        checkpoint: str | os.PathLike | None = None, seq_len: int | None = None,
        **overrides: Any) -> tuple[Any, ModelSpec]:
  """Builds model `name` at preset `size` and describes it.

  Args:
    name: one of `names()`: `'bert'`, `'resnet'`, `'lstm_attention'` or a registered family.
    size: one of `sizes(name)`; for BERT also `'bert-base'` and `'minilm-l6'`.
    num_classes: width of the logits.
    dtype: compute dtype, `'float32'`/`'bfloat16'` or the jnp dtype. Params are always float32.
    checkpoint: pretrained weights, which `ModelSpec.init` loads: a folder or file, or
      `"package:NAME"` for the weights a Python package ships (`resolve_checkpoint`).
      - `bert`: a Hugging Face BERT folder (`config.json` + `model.safetensors`); its config
        replaces the preset's.
      - `resnet`: a Hugging Face ResNet folder (`microsoft/resnet-50` format); its config (ImageNet
        stem) replaces the preset's; `image_size`, `axis_name` and other non-shape fields can still
        be overridden.
      - `lstm_attention`: the embedding table only: a `.npy` `[vocab, dim]` matrix aligned with the
        vocabulary, or a BERT folder, whose WordPiece table (and `[UNK]` id) is taken.
    seq_len: sequence length of the text models' inputs (the family's default: BERT 128, LSTM
      256).
    **overrides: fields of the model's config dataclass, e.g. `hidden_dropout=0.2` (BERT),
      `vocab_size=20000` (LSTM), `axis_name='batch'` (ResNet). ResNet also takes `depth` (10, 18,
      34, 50, 101 or 152: block type and stage sizes), `stem` and `width` (the width multiplier).

  Returns:
    `(model, spec)`: the linen module and its `ModelSpec`.

  Raises:
    ValueError: for an unknown name, preset or config field, or a bad value; the message lists what
      is known.
  """
  entry = family(name)  # Raises for an unknown name, listing the known ones.
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  dtype = _dtype(dtype)
  presets = entry.presets
  if size not in presets:
    raise ValueError(
        f'Unknown size {size!r} for model {name!r}; known sizes: {", ".join(presets)}.')
  checkpoint = resolve_checkpoint(checkpoint)
  if checkpoint is not None and not os.path.exists(checkpoint):
    raise ValueError(f"checkpoint {checkpoint!r} does not exist.")
  if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 1):
    raise ValueError(f"seq_len must be a positive int, got {seq_len!r}.")
  if entry.text is None and seq_len is not None:
    raise ValueError(f"seq_len applies to the text models only; {entry.title} takes images "
                     "(their size is a config field).")
  model, config, load = entry.build(entry, size=size, num_classes=num_classes, dtype=dtype,
                                    checkpoint=checkpoint, overrides=overrides)
  inputs = entry.resolved_inputs(config, entry.seq_len(config, seq_len))
  return model, ModelSpec(
      name=name, size=size, config=config, num_classes=num_classes, dtype=dtype, inputs=inputs,
      has_batch_stats=entry.has_batch_stats, checkpoint=checkpoint, model=model, _load=load)


def _dtype(dtype: Any) -> Any:
  try:
    key = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  except TypeError:
    key = None
  if key not in _DTYPES:
    raise ValueError(f'dtype must be one of {", ".join(_DTYPES)}, got {dtype!r}.')
  return _DTYPES[key]

"""The suite's models, and the registry of model families that `train/` and `benchmarks/` use.

    model, spec = models.get('resnet', size='small', num_classes=10, depth=18, stem='cifar')
    variables = spec.init(jax.random.key(0))   # with pretrained weights if a checkpoint was given
    logits = model.apply(variables, **spec.example_batch(4), train=False)

`get` returns a Flax linen module and a `ModelSpec` that describes its inputs (names, per-example
shapes, dtypes: the keys of the data pipeline's batches), whether it keeps BatchNorm state, and
how to initialise its variables. Every model takes its inputs as keyword arguments named as in the
spec, plus `train=...`, and returns float32 logits `[batch, num_classes]`.

Each model is a `Family` (see `registry`): `models.family('bert')` holds its inputs, its default
input options, the model options that follow from the data, its presets and its builder. The
three of the suite are defined in `_builtin`; `models.register` adds another.

The model modules are imported only when asked for, so that importing `models` stays cheap and a
model's dependencies (e.g. safetensors for a checkpoint) are needed only by those who use it.
"""

from models import _builtin  # noqa: F401  # Registers bert, lstm_attention and resnet.
from models.registry import DataFacts
from models.registry import Family
from models.registry import InputSpec
from models.registry import ModelSpec
from models.registry import TextInputs
from models.registry import family
from models.registry import get
from models.registry import names
from models.registry import register
from models.registry import resolve_checkpoint
from models.registry import sizes

__all__ = ["DataFacts", "Family", "InputSpec", "ModelSpec", "TextInputs", "family", "get",
           "names", "register", "resolve_checkpoint", "sizes"]

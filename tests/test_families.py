"""A fourth model family, defined only here, trains through the CLI like the suite's own three.

The family is a bag-of-embeddings text classifier with inputs of its own names (`tokens` and a
float `weights`), so that nothing in `train/` can lean on the names or shapes of the suite's models.
Registering it is all it takes: no file outside this one changes.
"""

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from train import __main__ as cli
from train import data
from train import loop
from train import tasks

NAME = "bag_of_embeddings"


@dataclasses.dataclass(frozen=True)
class BagConfig:
  vocab_size: int = 1000
  embedding_size: int = 32


# The family's module is this file: `Family.module` names it, and its PRESETS are these.
PRESETS = {"full": BagConfig(embedding_size=128), "small": BagConfig(embedding_size=64),
           "tiny": BagConfig(embedding_size=16)}


class BagOfEmbeddings(nn.Module):
  """The masked mean of the token embeddings, then a linear classifier."""

  config: BagConfig
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, weights, *, train):
    del train
    x = nn.Embed(self.config.vocab_size, self.config.embedding_size, dtype=self.dtype)(tokens)
    weights = weights[..., None].astype(x.dtype)
    x = (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def _build(family, *, size, num_classes, dtype, checkpoint, overrides):
  if checkpoint is not None:
    raise ValueError(f"{family.name} has no pretrained weights")
  config = dataclasses.replace(family.presets[size], **overrides)
  return BagOfEmbeddings(config, num_classes, dtype), config, None


def _to_inputs(ids, lengths, segment_b):
  del segment_b
  steps = np.arange(ids.shape[1])[None, :]
  return {"tokens": ids, "weights": (steps < lengths[:, None]).astype(np.float32)}


FAMILY = models.Family(
    name=NAME, module=__name__, build=_build, kind="text",
    inputs=(models.InputSpec("tokens", ("seq_len",), np.int32, vocab_ids=True),
            models.InputSpec("weights", ("seq_len",), np.float32, fill=1)),
    text=models.TextInputs(to_inputs=_to_inputs, max_len=32, tokens=("words",)),
    model_options=lambda facts: {"vocab_size": facts.vocab_size},
    title="bag of embeddings")


@pytest.fixture
def bag(monkeypatch):
  """The family, registered for one test (the registry is put back after it)."""
  monkeypatch.setattr(models.registry, "_FAMILIES", dict(models.registry._FAMILIES))
  models.register(FAMILY)
  return FAMILY


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_registered_family_is_known_everywhere(bag):
  assert NAME in models.names() and models.family(NAME) is bag
  assert models.sizes(NAME) == ("full", "small", "tiny")
  model, spec = models.get(NAME, "tiny", num_classes=3, vocab_size=50, seq_len=7)
  assert spec.input_names == ("tokens", "weights") and not spec.has_batch_stats
  assert [(s.shape, s.dtype) for s in spec.inputs] == [((7,), np.int32), ((7,), np.float32)]
  np.testing.assert_array_equal(spec.example_batch(2)["weights"], np.ones((2, 7)))
  logits = model.apply(spec.init(jax.random.key(0)), **spec.example_batch(2), train=False)
  assert logits.shape == (2, 3)
  # Its defaults reach the data pipeline and the task registry.
  options = data.InputOptions(NAME)
  assert (options.max_len, options.tokens) == (32, "words")
  with pytest.raises(ValueError, match=r"tokens='wordpiece': bag of embeddings inputs are word"):
    data.InputOptions(NAME, tokens="wordpiece")
  assert tasks.Task("mine", "local:/x", NAME).model == NAME
  with pytest.raises(ValueError, match="registered twice"):
    models.register(FAMILY)


def test_the_registry_is_back_without_it():
  assert NAME not in models.names()
  with pytest.raises(ValueError, match=rf"Unknown model '{NAME}'; known models: bert, "):
    models.family(NAME)


def test_fourth_family_learns_through_the_cli(bag, tmp_path, data_dir, capsys):
  workdir = tmp_path / "run"
  argv = ["--task", "wordnet_topics", "--set", f"model_family={NAME}", "--workdir", str(workdir),
          "--data-dir", str(data_dir), "--model-size", "small", "--epochs", "3",
          "--batch-size", "32", "--lr", "1e-2", "--num-devices", "1", "--quiet",
          "--set", "train_examples=3000", "--set", "eval_examples=1000",
          "--set", f"cache_dir={tmp_path / 'cache'}"]
  assert cli.main(argv) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

  rows = _jsonl(workdir / "epochs.jsonl")
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  assert rows[-1]["val_loss"] < rows[0]["val_loss"]
  # Chance is the share of the most common topic among the same validation examples.
  validation = loop.subset(data.get_source("wordnet_topics", data_dir).validation, 1000)
  labels = np.array([r["label"] for r in validation.__getitems__(range(len(validation)))])
  chance = np.bincount(labels).max() / len(labels)
  assert rows[-1]["val_accuracy"] > 2 * chance, (rows[-1]["val_accuracy"], chance)
  assert result["val_accuracy"] == rows[-1]["val_accuracy"]

  # The records say which family ran, with its config, and hold its steps and parameters.
  run = json.loads((workdir / "run.json").read_text())
  assert run["model"]["name"] == NAME and "BagConfig(" in run["model"]["config"]
  assert run["end"] is not None and set(run["test"]) == {"test_loss", "test_accuracy",
                                                         "test_examples"}
  assert json.loads((workdir / "config.json").read_text())["model_family"] == NAME
  steps = _jsonl(workdir / "steps.jsonl")  # One row every log_every=10 steps.
  assert [r["step"] for r in steps] == list(range(10, rows[-1]["step"] + 1, 10))
  assert (workdir / "final").is_dir()


def test_a_named_task_keeps_its_data_options_under_another_family(bag):
  task = tasks.resolve("rt_sentiment", NAME)
  assert (task.model, task.source, task.data_options) == (NAME, "rt_sentiment", {"max_len": 64})
  with pytest.raises(tasks.TaskError, match=r"'bag_of_embeddings' reads text data, but task "
                                            r"'fashion_mnist' .* holds image"):
    tasks.resolve("fashion_mnist", NAME)

"""Tasks pair a data source with a model family: the seed's three, and their offline stand-ins.

Your own data needs no Python: `--task local:DIR --model NAME` trains model family `NAME` (any of
`models.names()`) on the folder `DIR`, which holds `train.jsonl` and `test.jsonl`
(`{"text": ..., "label": ...}` rows), CSVs, or IDX images (see `train.data.local`). `--model`
also swaps the family of a named task, where it reads the same kind of data (text or images).

A named preset for your data is one `register` call before the CLI runs, e.g. in `my_task.py`:

    from train import tasks
    from train.__main__ import main

    tasks.register(tasks.Task("my_reviews", source="local:/data/reviews", model="lstm_attention",
                              data_options={"max_len": 64}))

    if __name__ == "__main__":
      main()

then `python my_task.py --task my_reviews --strategy gradvar ...`.
"""

import dataclasses
import pathlib

import models

# `--task local:DIR` names a folder rather than a registered task.
LOCAL = "local:"


@dataclasses.dataclass(frozen=True)
class Task:
  """A named (data source, model family) pair.

  Attributes:
    name: the `--task` name.
    source: a `train.data.get_source` name (`cifar10`, `fashion_mnist`, `local:DIR`, `tfds:NAME`).
    model: a model family (`models.names()`): `bert`, `resnet`, `lstm_attention`, ...
    model_options: fixed model overrides for this task (the run's `--set model.X=` come on top).
    data_options: fixed input options (`max_len`, ...; the run's `--set data.X=` come on top).
    description: one line for `--help`.
  """

  name: str
  source: str
  model: str
  model_options: dict = dataclasses.field(default_factory=dict)
  data_options: dict = dataclasses.field(default_factory=dict)
  description: str = ""

  def __post_init__(self):
    if self.model not in models.names():
      raise ValueError(f"Task {self.name!r}: model must be one of {models.names()}, "
                       f"got {self.model!r}")


_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
  if task.name in _TASKS:
    raise ValueError(f"task {task.name!r} is registered twice")
  _TASKS[task.name] = task
  return task


def names() -> list[str]:
  return sorted(_TASKS)


def get(name: str) -> Task:
  if name not in _TASKS:
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
  return _TASKS[name]


class TaskError(ValueError):
  """A `--task` / `--model` pair that cannot be trained; `field` is the config field at fault."""

  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field = field


def local_kind(name: str) -> str:
  """The kind of data ("text" or "image") in the folder of `local:DIR`, read to check it.

  Raises:
    TaskError: the folder is missing, holds no complete layout (the message names the folder and
      the files expected) or a malformed file (the message names the file).
  """
  from train.data import local  # jax and grain, if asked

  folder = name[len(LOCAL):]
  if not folder:
    raise TaskError("task", f"{name!r} names no folder; give local:DIR, where DIR holds "
                            f"{local.LAYOUTS}")
  try:
    return local.local_source(pathlib.Path(folder), name).kind
  except (FileNotFoundError, ValueError) as e:  # A bad config like any other: the CLI exits 2.
    raise TaskError("task", str(e)) from None  # It names the folder or the file.


def _check_fits(family: str, kind: str, data: str) -> None:
  wants = models.family(family).kind
  if wants != kind:
    raise TaskError("model_family",
                    f"model family {family!r} reads {wants} data, but {data} holds {kind}")


def resolve(name: str, model_family: str | None = None) -> Task:
  """The task that `--task name [--model model_family]` trains.

  A `local:DIR` task reads its folder here, so that a missing or malformed one is reported
  before anything is built (the files are parsed once per process, see `train.data._files`).

  Args:
    name: a registered task, or `local:DIR`.
    model_family: the model family to train; None takes the task's own (`local:` needs one). A
      named task keeps its data options and drops its model options, which belong to its own
      family.

  Raises:
    TaskError: an unknown task or family, a bad `local:` folder, a `local:` task without a
      family, or a family that reads another kind of data than the task's (naming both).
  """
  if model_family is not None and model_family not in models.names():
    raise TaskError("model_family", f"unknown model family {model_family!r}; known: "
                                    f"{', '.join(models.names())}")
  if name.startswith(LOCAL):
    kind = local_kind(name)
    if model_family is None:
      raise TaskError("model_family",
                      f"{name} ({kind} data) needs a model family (--model NAME, the "
                      f"model_family field): one of {', '.join(models.names())}")
    _check_fits(model_family, kind, name)
    return Task(name, name, model_family, description=f"{model_family} on {name[len(LOCAL):]}")
  if name not in _TASKS:
    raise TaskError("task", f"unknown task {name!r}; known tasks: {', '.join(names())}; or "
                            f"{LOCAL}DIR for a folder of your own data")
  task = _TASKS[name]
  if model_family is None or model_family == task.model:
    return task
  _check_fits(model_family, models.family(task.model).kind,
              f"task {name!r} (source {task.source!r}, model family {task.model!r})")
  return dataclasses.replace(task, model=model_family, model_options={})


# The seed's tasks (TFDS; prepared once on a machine with internet, see the README).
register(Task("ag_news", "ag_news_subset", "bert", description="AG News topics, BERT"))
register(Task("cifar10", "cifar10", "resnet", description="CIFAR-10 images, ResNet-50"))
register(Task("imdb", "imdb_reviews", "lstm_attention",
              description="IMDb sentiment, LSTM with attention"))
# Their offline stand-ins, read from --data-dir / GRADVAR_DATA_DIR. The stand-in texts are one or
# two sentences, so shorter sequences lose nothing and cost far less on a CPU.
register(Task("wordnet_topics", "wordnet_topics", "bert", data_options={"max_len": 64},
              description="WordNet noun glosses, 25 topics, BERT (stands in for AG News)"))
register(Task("fashion_mnist", "fashion_mnist", "resnet",
              description="Fashion-MNIST 28x28, ResNet (stands in for CIFAR-10)"))
register(Task("rt_sentiment", "rt_sentiment", "lstm_attention", data_options={"max_len": 64},
              description="Rotten Tomatoes snippets, LSTM with attention (stands in for IMDb)"))

"""Tasks pair a data source with a model: the seed's three, and their offline stand-ins.

A task for your own data is one `register` call before the CLI runs, e.g. in `my_task.py`:

    from train import tasks
    from train.__main__ import main

    tasks.register(tasks.Task("my_reviews", source="local:/data/reviews", model="lstm_attention"))

    if __name__ == "__main__":
      main()

then `python my_task.py --task my_reviews --strategy gradvar ...`. The `local:` folder holds
`train.jsonl` and `test.jsonl` (`{"text": ..., "label": ...}` rows), CSVs, or IDX images.
"""

import dataclasses

import models


@dataclasses.dataclass(frozen=True)
class Task:
  """A named (data source, model) pair.

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

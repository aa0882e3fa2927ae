"""The regime check: a classical reference per task, on exactly the runs' training and validation
data.

  python -m benchmarks regime --suite NAME [--tasks T ...] [--out DIR] [--data-dir DIR]

For each task of a suite, the reference is fitted on the same training subset and scored on the
same validation split as the suite's runs, read the way `train.loop.setup` reads them
(`train.data.get_source`, then the `train_examples` / `eval_examples` subsets):

- text: TF-IDF over word 1- and 2-grams, then logistic regression;
- images: logistic regression on the pixels, scaled to [0, 1] and standardised on the training
  split.

It writes `<out>/regime.json`: per task the reference's validation accuracy, the sizes and the
class-prior loss (the cross-entropy on the validation labels of predicting the training labels'
frequencies: a run whose validation loss is above it has memorised), with the command and the
scikit-learn version. The report compares each task's tuned baseline with it.
"""

import json
import pathlib
import platform
import sys
from typing import Any, Optional

import numpy as np

from benchmarks import stats
from benchmarks import suite as suite_lib
from train import records

REGIME_FILE = "regime.json"
# Fixed settings, not tuned: a reference says what a plain, standard model reaches on this data.
TEXT = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1}
LOGREG = {"C": 1.0, "max_iter": 2000}
TEXT_METHOD = "TF-IDF word 1-2-grams + logistic regression"
IMAGE_METHOD = "logistic regression on standardised pixels"


def task_data(suite: suite_lib.Suite, task: str, data_dir: Optional[str] = None):
  """The task's source and its training and validation splits as the suite's runs see them."""
  from train import data
  from train import loop
  from train import tasks as tasks_lib
  config = suite.run(task, suite.baseline, suite.seeds[0]).config()
  resolved = tasks_lib.resolve(config.task, config.model_family)
  source = data.get_source(resolved.source, data_dir=data_dir or config.data_dir,
                           tfds_data_dir=config.tfds_data_dir)
  # train.loop.setup's own subsets, so the reference sees the runs' examples exactly.
  train = loop.subset(source.train, config.train_examples)
  validation = loop.subset(source.validation, config.eval_examples)
  return source, train, validation


def _records(split) -> list[dict]:
  return split.__getitems__(list(range(len(split))))


def _text(record: dict) -> str:
  # Pair tasks: both texts, with a separator token that the 1-2-grams can see.
  return record["text"] if "text_b" not in record else f"{record['text']} [SEP] {record['text_b']}"


def fit_text(train_texts, train_labels, val_texts, val_labels) -> float:
  """Validation accuracy of TF-IDF 1-2-grams + logistic regression."""
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression
  vectorizer = TfidfVectorizer(**TEXT)
  x_train = vectorizer.fit_transform(train_texts)
  model = LogisticRegression(**LOGREG).fit(x_train, train_labels)
  return float(np.mean(model.predict(vectorizer.transform(val_texts)) == np.asarray(val_labels)))


def fit_images(train_images, train_labels, val_images, val_labels) -> float:
  """Validation accuracy of logistic regression on the pixels."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  flat = lambda xs: np.stack([np.asarray(x, np.float32).reshape(-1) / 255.0 for x in xs])
  scaler = StandardScaler().fit(flat(train_images))
  model = LogisticRegression(**LOGREG).fit(scaler.transform(flat(train_images)), train_labels)
  predicted = model.predict(scaler.transform(flat(val_images)))
  return float(np.mean(predicted == np.asarray(val_labels)))


def reference(source, train, validation) -> dict[str, Any]:
  """The reference's figures on one task's splits."""
  train_rows, val_rows = _records(train), _records(validation)
  y_train = [r["label"] for r in train_rows]
  y_val = [r["label"] for r in val_rows]
  if len(set(y_train)) < 2:
    raise ValueError(f"regime: {source.name}'s training subset has one class only; a classifier "
                     "needs two")
  if source.kind == "text":
    accuracy = fit_text([_text(r) for r in train_rows], y_train, [_text(r) for r in val_rows],
                        y_val)
    method, settings = TEXT_METHOD, {**TEXT, **LOGREG}
  else:
    accuracy = fit_images([r["image"] for r in train_rows], y_train,
                          [r["image"] for r in val_rows], y_val)
    method, settings = IMAGE_METHOD, dict(LOGREG)
  return {"method": method, "settings": {k: list(v) if isinstance(v, tuple) else v
                                         for k, v in settings.items()},
          "source": source.name, "kind": source.kind, "accuracy": accuracy,
          "train_examples": len(train_rows), "validation_examples": len(val_rows),
          "num_classes": source.num_classes,
          "class_prior_loss": stats.class_prior_loss(y_train, y_val)}


def run(suite: suite_lib.Suite, out: pathlib.Path, argv: list[str], tasks=None,
        data_dir: Optional[str] = None) -> int:
  """Computes every task's reference and writes `<out>/regime.json`; returns 0."""
  import sklearn
  chosen = list(tasks or suite.tasks)
  for t in chosen:
    if t not in suite.tasks:
      raise ValueError(f"--tasks: {t} not in the suite ({', '.join(suite.tasks)})")
  command = "python -m benchmarks " + " ".join(argv)
  results = {}
  for task in chosen:
    source, train, validation = task_data(suite, task, data_dir)
    results[task] = {**reference(source, train, validation), "command": command}
    print(f"{task}: {results[task]['method']}: validation accuracy "
          f"{results[task]['accuracy']:.4f} ({results[task]['train_examples']} train, "
          f"{results[task]['validation_examples']} validation)")
  path = pathlib.Path(out) / REGIME_FILE
  previous = {}
  if path.exists():
    previous = json.loads(path.read_text()).get("tasks", {})
  payload = {"command": command, "date": records.now(),
             "git": records.git_commit(), "sklearn": sklearn.__version__,
             "python": platform.python_version(), "tasks": {**previous, **results}}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2) + "\n")
  print(f"wrote {path}", file=sys.stderr)
  return 0

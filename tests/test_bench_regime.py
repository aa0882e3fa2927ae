"""The regime check's references: on toy data by hand, and on the tiny suite's own splits."""

import json

import numpy as np
import pytest

from benchmarks import __main__ as cli
from benchmarks import regime
from benchmarks import suite as suite_lib

pytest.importorskip("sklearn")


def test_text_reference_separates_words_it_has_seen():
  train = ["good great film", "great fun", "bad awful film", "awful boring"]
  val = ["good fun", "boring bad", "great great"]
  assert regime.fit_text(train, [1, 1, 0, 0], val, [1, 0, 1]) == 1.0
  # Labels swapped on the validation side: every prediction is now wrong.
  assert regime.fit_text(train, [1, 1, 0, 0], val, [0, 1, 0]) == 0.0


def test_image_reference_on_pixels():
  rng = np.random.default_rng(0)
  dark = [rng.integers(0, 60, (4, 4, 1), dtype=np.uint8) for _ in range(6)]
  bright = [rng.integers(190, 255, (4, 4, 1), dtype=np.uint8) for _ in range(6)]
  images, labels = dark[:4] + bright[:4], [0] * 4 + [1] * 4
  assert regime.fit_images(images, labels, dark[4:] + bright[4:], [0, 0, 1, 1]) == 1.0


def test_regime_command_on_the_tiny_suite(tmp_path, capsys):
  out = tmp_path / "out"
  assert cli.main(["regime", "--suite", "tiny", "--out", str(out)]) == 0
  payload = json.loads((out / "regime.json").read_text())
  import sklearn
  assert payload["sklearn"] == sklearn.__version__
  assert payload["command"] == f"python -m benchmarks regime --suite tiny --out {out}"
  r = payload["tasks"]["rt_sentiment"]
  # The tiny suite's subsets: train_examples = 48, eval_examples = 32.
  assert (r["train_examples"], r["validation_examples"]) == (48, 32)
  assert r["kind"] == "text" and r["method"] == regime.TEXT_METHOD
  assert 0.0 <= r["accuracy"] <= 1.0
  assert r["accuracy"] * 32 == pytest.approx(round(r["accuracy"] * 32))  # a count of 32
  # The class-prior loss from the same splits' labels, counted here.
  _, train, validation = regime.task_data(suite_lib.load("tiny"), "rt_sentiment")
  y_train = np.array([x["label"] for x in regime._records(train)])
  y_val = np.array([x["label"] for x in regime._records(validation)])
  freq = np.bincount(y_train, minlength=y_val.max() + 1) / len(y_train)
  assert r["class_prior_loss"] == pytest.approx(-np.mean(np.log(freq[y_val])))
  assert "rt_sentiment: TF-IDF" in capsys.readouterr().out


def test_regime_rejects_an_unknown_task(tmp_path, capsys):
  assert cli.main(["regime", "--suite", "tiny", "--tasks", "nope", "--out", str(tmp_path)]) == 2
  assert "--tasks: nope not in the suite" in capsys.readouterr().err

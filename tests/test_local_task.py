"""`--task local:DIR` with a model family: your own data from the CLI, with no Python file.

The folders are written here (JSONL, CSV and IDX, the layouts `train.data.local` reads); the runs go
through `train.__main__.main` in-process, as `python -m train` would. `--model NAME` is passed as
`--set model_family=NAME`, the config field it sets.
"""

import gzip
import json
import re
import struct

import numpy as np
import pytest

from train import __main__ as cli
from train import config as config_lib
from train import loop
from train import tasks

WORDS = {"pos": ["good", "great", "fine", "lovely", "superb"],
         "neg": ["bad", "awful", "poor", "dull", "grim"]}


def _texts(n, seed):
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    label = ("pos", "neg")[i % 2]
    words = list(rng.choice(WORDS[label], 3)) + list(rng.choice(["the", "a", "film", "plot"], 2))
    rows.append({"text": " ".join(rng.permutation(words)), "label": label})
  return rows


def _jsonl_folder(folder):
  folder.mkdir()
  for split, n, seed in (("train", 64, 0), ("test", 16, 1)):
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _texts(n, seed)))
  return folder


def _csv_folder(folder):
  folder.mkdir()
  for split, n, seed in (("train", 64, 2), ("test", 16, 3)):
    lines = ["text,label"] + [f"{r['text']},{r['label']}" for r in _texts(n, seed)]
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
  return folder


def _write_idx(path, array):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def _idx_folder(folder):
  """Bright or dark 8x8 images, labelled 1 and 0."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  for prefix, n in (("train", 64), ("t10k", 16)):
    labels = (np.arange(n) % 2).astype(np.uint8)
    images = (rng.integers(0, 100, (n, 8, 8)) + 150 * labels[:, None, None]).astype(np.uint8)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return folder


def _argv(task, workdir, *extra):
  return ["--task", task, "--workdir", str(workdir), "--model-size", "tiny", "--epochs", "2",
          "--batch-size", "8", "--num-devices", "1", "--quiet",
          "--set", f"cache_dir={workdir.parent / 'cache'}", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("layout, family", [
    (_jsonl_folder, "lstm_attention"),
    (_csv_folder, "bert"),
    (_idx_folder, "resnet"),
])
def test_local_folder_trains_from_the_cli(layout, family, tmp_path, capsys):
  folder = layout(tmp_path / "mydata")
  workdir = tmp_path / "run"
  assert cli.main(_argv(f"local:{folder}", workdir, "--set", f"model_family={family}")) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  rows = [json.loads(l) for l in (workdir / "epochs.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)
  assert result["test_accuracy"] is not None
  run = json.loads((workdir / "run.json").read_text())
  assert run["model"]["name"] == family and run["end"] is not None
  # 64 training examples less the validation carve; 16 test examples, all evaluated.
  assert run["train_examples"] + run["validation_examples"] == 64
  assert run["test"]["test_examples"] == 16
  config = json.loads((workdir / "config.json").read_text())
  assert (config["task"], config["model_family"]) == (f"local:{folder}", family)
  labels = json.loads((workdir / "labels.json").read_text())
  assert labels == {"source": f"local:{folder}",
                    "label_names": ["0", "1"] if family == "resnet" else ["neg", "pos"]}


def test_local_task_builds_the_family_it_is_given(tmp_path):
  folder = _jsonl_folder(tmp_path / "mydata")
  config = config_lib.Config(task=f"local:{folder}", workdir=str(tmp_path / "run"),
                             model_family="lstm_attention", model_size="tiny", num_devices=1,
                             batch_size=8, cache_dir=str(tmp_path / "cache"))
  s = loop.setup(config)
  assert (s.task.model, s.task.source) == ("lstm_attention", f"local:{folder}")
  assert s.model_spec.name == "lstm_attention" and s.source.kind == "text"
  # The family's options follow from the folder's data: its vocabulary, max_len's default.
  assert s.model_spec.config.vocab_size == s.inputs.vocab_size < 64
  assert s.model_spec.shapes(1)["token_ids"].shape == (1, 256)


def test_model_family_replaces_a_named_tasks_own(tmp_path, data_dir):
  config = config_lib.Config(task="rt_sentiment", workdir=str(tmp_path / "run"),
                             model_family="bert", model_size="tiny", num_devices=1,
                             batch_size=8, data_dir=str(data_dir), train_examples=32,
                             data={"vocab_size": 200}, cache_dir=str(tmp_path / "cache"))
  s = loop.setup(config)
  assert s.task.model == "bert" and s.model_spec.name == "bert"
  # The task's data options stay (max_len 64 for its short texts); BERT's inputs come.
  assert s.model_spec.shapes(1)["input_ids"].shape == (1, 64)
  assert s.inputs.keys == ("input_ids", "attention_mask", "token_type_ids", "label")


@pytest.fixture
def no_training(monkeypatch):
  """Training must not start: the errors below come from validation, before anything is built."""
  def refuse(*args, **kwargs):
    raise AssertionError("loop.train was reached")
  monkeypatch.setattr(loop, "train", refuse)


def _error(argv, capsys):
  code = cli.main(argv)
  return code, capsys.readouterr().err


LAYOUT_WORDS = ("train.jsonl and test.jsonl", "train.csv and test.csv", "train-images-idx3-ubyte")


def test_missing_folder_names_it_and_the_files_expected(tmp_path, capsys, no_training):
  missing = tmp_path / "nope"
  code, err = _error(_argv(f"local:{missing}", tmp_path / "run", "--set",
                           "model_family=lstm_attention"), capsys)
  assert code == 2
  assert err.startswith("error: config.task: ") and f"{missing}: no such folder" in err
  assert all(w in err for w in LAYOUT_WORDS), err


@pytest.mark.parametrize("files, says", [
    ({}, "no data files"),
    ({"notes.txt": "hello\n"}, "no data files"),
    ({"train.jsonl": '{"text": "a", "label": "x"}\n'}, "no test.jsonl"),
    ({"train.csv": "text,label\na,x\n"}, "no test.csv"),
    ({"train-images-idx3-ubyte": ""}, "no train-labels-idx1-ubyte"),
])
def test_unreadable_layout_names_the_folder_and_the_files_expected(files, says, tmp_path, capsys,
                                                                   no_training):
  folder = tmp_path / "mydata"
  folder.mkdir()
  for name, text in files.items():
    (folder / name).write_text(text)
  code, err = _error(_argv(f"local:{folder}", tmp_path / "run", "--set",
                           "model_family=lstm_attention"), capsys)
  assert code == 2 and err.startswith("error: config.task: ")
  assert f"{folder}: {says}" in err and all(w in err for w in LAYOUT_WORDS), err


def test_malformed_file_names_the_file(tmp_path, capsys, no_training):
  folder = _jsonl_folder(tmp_path / "mydata")
  (folder / "test.jsonl").write_text('{"text": "a", "label": "pos"}\nnot json\n')
  code, err = _error(_argv(f"local:{folder}", tmp_path / "run", "--set",
                           "model_family=lstm_attention"), capsys)
  assert code == 2 and err.startswith("error: config.task: ")
  assert f"{folder / 'test.jsonl'}" in err and "line 2" in err, err


def test_local_task_without_a_family_names_the_folder_and_the_families(tmp_path, capsys,
                                                                       no_training):
  folder = _jsonl_folder(tmp_path / "mydata")
  code, err = _error(_argv(f"local:{folder}", tmp_path / "run"), capsys)
  assert code == 2 and err.startswith("error: config.model_family: ")
  assert f"local:{folder} (text data) needs a model family (--model NAME, " in err
  assert "bert, lstm_attention, resnet" in err


@pytest.mark.parametrize("task_of, family, says", [
    (lambda tmp: f"local:{_idx_folder(tmp / 'mydata')}", "lstm_attention",
     r"model family 'lstm_attention' reads text data, but local:.*mydata holds image"),
    (lambda tmp: f"local:{_jsonl_folder(tmp / 'mydata')}", "resnet",
     r"model family 'resnet' reads image data, but local:.*mydata holds text"),
    (lambda tmp: "fashion_mnist", "bert",
     r"model family 'bert' reads text data, but task 'fashion_mnist' \(source 'fashion_mnist', "
     r"model family 'resnet'\) holds image"),
    (lambda tmp: "rt_sentiment", "gpt", r"unknown model family 'gpt'; known: bert, "),
])
def test_family_that_does_not_fit_the_data_names_both(task_of, family, says, tmp_path, capsys,
                                                      no_training):
  code, err = _error(_argv(task_of(tmp_path), tmp_path / "run", "--set",
                           f"model_family={family}"), capsys)
  assert code == 2 and err.startswith("error: config.model_family: ")
  assert re.search(says, err), err


def test_validate_accepts_local_tasks_and_names_the_field(tmp_path):
  folder = _csv_folder(tmp_path / "mydata")
  good = config_lib.Config(task=f"local:{folder}", workdir=str(tmp_path / "run"),
                           model_family="bert")
  config_lib.validate(good)
  assert tasks.resolve(good.task, "bert") == tasks.Task(
      f"local:{folder}", f"local:{folder}", "bert", description=f"bert on {folder}")
  with pytest.raises(ValueError, match=r"^config\.task: 'local:' names no folder"):
    config_lib.validate(config_lib.Config(task="local:", workdir="w", model_family="bert"))
  with pytest.raises(ValueError, match=r"^config\.task: unknown task 'nope'; known tasks: "
                                       r"ag_news, .*; or local:DIR"):
    config_lib.validate(config_lib.Config(task="nope", workdir="w"))
  # Set from the command line like any field; the CLI's --model will set the same.
  config = config_lib.apply_overrides(good, ["model_family=lstm_attention"])
  assert config.model_family == "lstm_attention"
  assert config_lib.apply_overrides(config, ["model_family=none"]).model_family is None
  # A preset registered for the folder is still a named task.
  assert tasks.get("rt_sentiment").model == "lstm_attention"


def test_bert_checkpoint_without_vocab_names_the_checkpoint(tmp_path):
  folder = _csv_folder(tmp_path / "mydata")
  checkpoint = tmp_path / "ckpt"
  checkpoint.mkdir()
  config = config_lib.Config(task=f"local:{folder}", workdir=str(tmp_path / "run"),
                             model_family="bert", model_size="tiny", num_devices=1,
                             batch_size=8, model={"checkpoint": str(checkpoint)},
                             cache_dir=str(tmp_path / "cache"))
  with pytest.raises(ValueError, match=rf"^config\.model\.checkpoint: {checkpoint} has no "
                                       r"vocab\.txt"):
    loop.setup(config)

"""benchmarks.preflight: a suite that cannot run fails in one message before anything trains."""

import pathlib
import subprocess

from benchmarks import preflight

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_demo_suite_can_start_on_the_stand_ins(data_dir, tmp_path):
  assert preflight.problems("demo", tmp_path / "out", str(data_dir)) == []


def test_a_missing_data_folder_is_one_message_that_names_it(tmp_path, capsys):
  out = tmp_path / "out"
  rc = preflight.main(["--suite", "demo", "--data-dir", str(tmp_path / "none"), "--out", str(out)])
  assert rc == 2
  err = capsys.readouterr().err
  assert err.count("error:") == 1
  assert "'demo' suite cannot start here; nothing was trained" in err
  for task in ("rt_sentiment", "fashion_mnist"):  # the demo's tasks
    assert f"task {task}: {tmp_path / 'none' / task}: no such folder" in err
  assert not out.exists()


def test_the_default_data_folder_is_checked_when_none_is_given(tmp_path, monkeypatch):
  from train.data import sources
  monkeypatch.delenv("GRADVAR_DATA_DIR", raising=False)
  monkeypatch.setattr(sources, "DEFAULT_DATA_DIR", tmp_path / "no-data")
  found = preflight.problems("demo", tmp_path / "out")
  assert len(found) == 2  # one per task of the demo
  assert all(f"{tmp_path / 'no-data'}" in p and "the project's own data/" in p for p in found)


def test_missing_and_too_old_packages_are_named():
  have = preflight.importlib.metadata.version("pytest")
  missing = preflight.missing_packages(
      ["no-such-package-for-gradvar>=1", "pytest>=1", "pytest<1", "pytest; python_version < '3'"])
  assert missing == ["no-such-package-for-gradvar>=1 (not installed)", f"pytest<1 (found {have})"]
  found = preflight.problems("demo", wanted=["no-such-package-for-gradvar>=1"])
  assert len(found) == 1
  assert "lacks 1 of the suite's packages: no-such-package-for-gradvar>=1" in found[0]
  assert "make install" in found[0]


def test_the_checked_packages_are_pyprojects_library_and_suite_requirements():
  wanted = preflight.requirements()
  names = {w.split("=")[0].split(">")[0].split("<")[0].strip() for w in wanted}
  assert {"jax", "optax", "flax", "orbax-checkpoint", "tokenizers", "tomli-w"} <= names
  assert not any(n in names for n in ("pytest", "torch"))  # the test extra is not the suite's
  assert preflight.missing_packages(wanted) == []  # this venv is the suite's


def test_an_unknown_suite_or_an_unwritable_output_is_reported(tmp_path, data_dir):
  [unknown] = preflight.problems("no-such-suite", tmp_path / "out", str(data_dir))
  assert "no suite file" in unknown and "demo" in unknown
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  assert preflight.problems("tiny", blocker, str(data_dir)) == [
      f"the output folder {blocker} exists and is not a folder"]


def test_make_demo_is_compare_which_runs_the_preflight_itself():
  # `make -n` prints the recipe without running it (nor the venv install it depends on).
  lines = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
  assert any("-m benchmarks compare --suite demo" in line for line in lines)
  assert "GRADVAR_DATA_DIR" not in "\n".join(lines)


def test_compare_runs_the_preflight_before_training(tmp_path, capsys, monkeypatch, data_dir):
  from benchmarks import __main__ as cli
  from benchmarks import compare
  trained = []
  monkeypatch.setattr(compare, "compare", lambda *a, **k: trained.append(a) or 0)
  out = tmp_path / "out"
  rc = cli.main(["compare", "--suite", "demo", "--tasks", "fashion_mnist", "--data-dir",
                 str(tmp_path / "none"), "--out", str(out), "--no-progress"])
  assert rc == 2 and trained == [] and not out.exists()
  err = capsys.readouterr().err
  assert err.count("error:") == 1 and "'demo' suite cannot start here" in err
  # Only the narrowed suite's tasks are checked.
  assert f"task fashion_mnist: {tmp_path / 'none' / 'fashion_mnist'}: no such folder" in err
  assert "rt_sentiment" not in err
  # With the data there, it goes on to train.
  assert cli.main(["compare", "--suite", "demo", "--tasks", "fashion_mnist", "--data-dir",
                   str(data_dir), "--out", str(out), "--no-progress"]) == 0
  assert len(trained) == 1

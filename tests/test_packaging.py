""".ci/wheel_check.py's checks of the wheel and sdist reject what they should, on archives made
here.

The check itself (build, clean venv, README example) runs in CI as `make wheel-check`.
"""

import importlib.util
import io
import os
import pathlib
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("wheel_check", ROOT / ".ci" / "wheel_check.py")
wheel_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wheel_check)

VERSION = "9.8.7"
PACKAGE = sorted(f"gradvar_optax/{p.name}" for p in (ROOT / "gradvar_optax").iterdir()
                 if p.suffix == ".py" or p.name == "py.typed")
DIST_INFO = [f"gradvar_optax-{VERSION}.dist-info/{n}"
             for n in ("METADATA", "WHEEL", "RECORD", "top_level.txt", "licenses/LICENSE")]
SDIST = ["pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE", "PKG-INFO",
         *PACKAGE, "tests/conftest.py", "tests/gradvar_reference.py",
         "tests/test_gradvar_algorithm.py"]


def _wheel(tmp_path, names):
  path = tmp_path / f"gradvar_optax-{VERSION}-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as z:
    for name in names:
      z.writestr(name, "")
  return path


def _sdist(tmp_path, names):
  path = tmp_path / f"gradvar_optax-{VERSION}.tar.gz"
  with tarfile.open(path, "w:gz") as t:
    for name in names:
      info = tarfile.TarInfo(f"gradvar_optax-{VERSION}/{name}")
      t.addfile(info, io.BytesIO(b""))
  return path


def test_the_package_has_py_typed():
  assert "gradvar_optax/py.typed" in PACKAGE and "gradvar_optax/__init__.py" in PACKAGE


def test_a_wheel_of_the_library_alone_passes(tmp_path):
  wheel_check.check_wheel(_wheel(tmp_path, PACKAGE + DIST_INFO), VERSION)


@pytest.mark.parametrize("change", ["extra module", "suite package", "no py.typed", "no RECORD"])
def test_a_wheel_with_more_or_less_fails(tmp_path, change):
  names = PACKAGE + DIST_INFO
  if change == "extra module":
    names = names + ["gradvar_optax/notes.txt"]
  elif change == "suite package":
    names = names + ["train/__init__.py"]
  elif change == "no py.typed":
    names = [n for n in names if not n.endswith("py.typed")]
  else:
    names = [n for n in names if not n.endswith("RECORD")]
  with pytest.raises(AssertionError):
    wheel_check.check_wheel(_wheel(tmp_path, names), VERSION)


def test_an_sdist_of_the_library_passes(tmp_path):
  wheel_check.check_sdist(_sdist(tmp_path, SDIST), VERSION)


@pytest.mark.parametrize("extra", ["data/rt_sentiment/train.jsonl",
                                   "benchmarks/results/cpu/REPORT.md", "train/loop.py",
                                   "tests/test_train.py"])
def test_an_sdist_with_data_results_or_the_suite_fails(tmp_path, extra):
  with pytest.raises(AssertionError, match=extra.split("/")[0]):
    wheel_check.check_sdist(_sdist(tmp_path, SDIST + [extra]), VERSION)


def test_an_sdist_without_the_changelog_fails(tmp_path):
  with pytest.raises(AssertionError, match="CHANGELOG.md"):
    wheel_check.check_sdist(_sdist(tmp_path, [n for n in SDIST if n != "CHANGELOG.md"]), VERSION)


def test_the_check_runs_the_readmes_own_library_example():
  code = wheel_check.readme_block((ROOT / "README.md").read_text(encoding="utf-8"),
                                  "## The library")
  assert "gradvar_optax.gradvar(optax.adam(1e-3))" in code and "params =" in code
  assert "grads =" in code


def test_ci_runs_the_wheel_check_and_the_readmes_test_command():
  script = (ROOT / ".ci" / "run").read_text()
  commands = [line.strip() for line in script.splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
  assert "make wheel-check" in commands and "make test" in commands
  assert "shared" not in script and "GRADVAR_DATA_DIR" not in script


def test_the_check_runs_every_python_block_of_the_readmes_library_sections():
  blocks = wheel_check.library_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
  headings = [heading for heading, _ in blocks]
  assert len(blocks) >= 8 and headings[0] == "## The library"
  text = "\n".join(code for _, code in blocks)
  for used in ("grouped_grad", "train_state.TrainState", "nnx.Optimizer", "jax.shard_map",
               "jax.pmap"):
    assert used in text, used
  # Standalone: every block imports what it uses rather than leaning on an earlier one.
  for heading, code in blocks:
    assert code.startswith("import "), f"a block under {heading!r} does not start with imports"


def test_run_blocks_runs_each_block_alone_and_names_the_one_that_fails(tmp_path):
  env = {**os.environ, **wheel_check.BLOCK_ENV}
  ok = ("## A", "import os\nassert os.environ['XLA_FLAGS'].endswith('count=2')\n")
  leaning = ("### B", "import os\nprint(x)\n")  # x was defined in no block of its own
  assert len(wheel_check.run_blocks(sys.executable, [ok], tmp_path, env)) == 1
  with pytest.raises(AssertionError, match=r"block 1 under '### B' failed:(.|\n)*NameError"):
    wheel_check.run_blocks(sys.executable, [("## A", "x = 1\n"), leaning], tmp_path, env)

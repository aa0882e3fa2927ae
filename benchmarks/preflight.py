"""Checks, before a suite trains anything, that it can run here (run from the repository root):

  python -m benchmarks.preflight --suite NAME [--out DIR] [--data-dir DIR]

It checks that this Python has the packages of the `suite` extra at the versions that
pyproject.toml asks for and that the suite's code imports, that the suite file loads and every
run's config is valid, that every task's data can be read (the stand-ins from `--data-dir`, else
$GRADVAR_DATA_DIR, else the project's data/; TFDS sets from their prepared folder), and that the
output folder can be written. `python -m benchmarks compare` runs it first (`check`), so that a
missing data folder or a broken venv ends in one message that says what to do, not in one failed
run per task and strategy and an empty table. Exit status 0 when all is well, 2 otherwise.
"""

import argparse
import importlib.metadata
import os
import pathlib
import re
import sys

import tomllib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def requirements(extra: str = "suite", pyproject: pathlib.Path = REPO_ROOT / "pyproject.toml"
                 ) -> list[str]:
  """The library's dependencies and those of `extra`, as pyproject.toml writes them."""
  with open(pyproject, "rb") as f:
    project = tomllib.load(f)["project"]
  return [*project["dependencies"], *project["optional-dependencies"][extra]]


def missing_packages(wanted: list[str]) -> list[str]:
  """Those of the requirement strings `wanted` that this Python lacks, with what it has instead."""
  try:
    from packaging.requirements import Requirement
  except ImportError:  # packaging comes with the suite's packages; without it, check names only
    Requirement = None
  missing = []
  for text in wanted:
    if Requirement is None:
      name, specifier = re.split(r"[\s<>=!~;\[]", text, maxsplit=1)[0], None
    else:
      requirement = Requirement(text)
      if requirement.marker is not None and not requirement.marker.evaluate():
        continue
      name, specifier = requirement.name, requirement.specifier
    try:
      version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      missing.append(f"{text} (not installed)")
      continue
    if specifier is not None and not specifier.contains(version, prereleases=True):
      missing.append(f"{text} (found {version})")
  return missing


def _writable(folder: pathlib.Path) -> str | None:
  """Why `folder` cannot be made or written, or None. Makes nothing."""
  if folder.exists() and not folder.is_dir():
    return f"the output folder {folder} exists and is not a folder"
  existing = folder
  while not existing.exists():
    existing = existing.parent
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"the output folder {folder} cannot be written ({existing} is not writable)"
  return None


def problems(suite_name, out: pathlib.Path | None = None, data_dir: str | None = None,
             wanted: list[str] | None = None) -> list[str]:
  """Everything that would stop the suite `suite_name`, each as one sentence; [] when none.

  Args:
    suite_name: a name under benchmarks/suites/ or a path to a .toml file, or a loaded
      (possibly narrowed) `benchmarks.suite.Suite`, whose runs alone are checked.
    out: the output folder (default: benchmarks/results/<suite name>, as `compare`'s).
    data_dir: the stand-ins' folder, as `compare --data-dir` takes it.
    wanted: the requirement strings to check (default: the library's and the `suite` extra's).
  """
  missing = missing_packages(requirements() if wanted is None else wanted)
  if missing:
    # What follows imports these packages: stop at the first problem a user can fix.
    return [f"{sys.executable} lacks {len(missing)} of the suite's packages: "
            f"{', '.join(missing)}. `make install` installs them into .venv (or "
            "`pip install -e '.[suite]'` into your own environment)."]
  try:

    from benchmarks import suite as suite_lib
    from train import config as config_lib
    from train import data
    from train import tasks as tasks_lib
  except Exception as e:  # a broken install shows up as anything
    return [f"the suite's code does not import in {sys.executable}: {type(e).__name__}: {e}. "
            "`make clean install` rebuilds .venv."]
  try:
    named = isinstance(suite_name, (str, os.PathLike))
    suite = suite_lib.load(suite_name) if named else suite_name
  except ValueError as e:
    return [str(e)]
  found = []
  runs = suite.grid()
  for run in runs:
    try:
      config = run.config()
      config_lib.validate(config)
    except ValueError as e:
      message = f"{suite.path}: {run.task}/{run.strategy}: {e}"
      if message not in found:  # the same bad setting is in every seed's run
        found.append(message)
  for task in suite.tasks:
    tfds_data_dir = next((r.config().tfds_data_dir for r in runs if r.task == task), None)
    try:
      data.get_source(tasks_lib.get(task).source, data_dir=data_dir,
                      tfds_data_dir=tfds_data_dir)
    except (OSError, ValueError) as e:  # get_source's own errors say what to do
      found.append(f"task {task}: {e}")
    except Exception as e:  # a reader's error the run would hit too
      found.append(f"task {task}: reading {tasks_lib.get(task).source!r} failed: "
                   f"{type(e).__name__}: {e}")
  why = _writable(out if out is not None else REPO_ROOT / "benchmarks" / "results" / suite.name)
  if why:
    found.append(why)
  return found


def check(suite, out: pathlib.Path | None = None, data_dir: str | None = None) -> bool:
  """`problems`, printed as one error message on stderr; True when the suite can start."""
  found = problems(suite, out, data_dir)
  name = suite if isinstance(suite, (str, os.PathLike)) else suite.name
  if found:
    lines = "\n".join(f"  - {x}" for x in found)
    print(f"error: the {str(name)!r} suite cannot start here; nothing was trained.\n{lines}",
          file=sys.stderr)
    return False
  print(f"preflight: the {str(name)!r} suite can start (packages, configs, data and output "
        "folder checked)", file=sys.stderr)
  return True


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.preflight", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", required=True,
                 help="a name under benchmarks/suites/ (e.g. demo) or a path to a .toml file")
  p.add_argument("--out", help="output folder (default: benchmarks/results/<suite name>)")
  p.add_argument("--data-dir", help="folder of the offline stand-ins (default: "
                                    "$GRADVAR_DATA_DIR, else the project's data/)")
  args = p.parse_args(argv)
  out = pathlib.Path(args.out).resolve() if args.out else None
  return 0 if check(args.suite, out, args.data_dir) else 2


if __name__ == "__main__":
  sys.exit(main())

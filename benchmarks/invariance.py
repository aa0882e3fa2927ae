"""Checks that a refactor left training unchanged: one run with an older commit and with this tree.

    python -m benchmarks.invariance               # the cpu suite's rt_sentiment gradvar run, seed 0
    python -m benchmarks.invariance --quick       # a tiny config (tests/test_invariance.py runs it)
    python -m benchmarks.invariance --base COMMIT --strategy fixed
    python -m benchmarks.invariance --repeat RUN_DIR [--out DIR]

The older commit is exported with `git archive` into a temporary folder and both trees run the same
`python -m train` command line with this interpreter, on the same machine, each with its own cache.
Every deterministic field of their records, as the records reader reads them (so that rows of
records schema 1 to 3 of the same run compare equal), must be bitwise equal: each step row, each
epoch and evaluation row without its clock and memory fields, and the test metrics. Exit status
0 when they are, 1 when not.

`--repeat RUN_DIR` needs no older tree: it trains a finished run's own `config.json` again with this
tree and compares the new records with the committed ones. It shows that runs made at a commit
that is no longer at hand, or before a change, would be the same at this one.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import runs as runs_lib
from train import records

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The last commit before the seams refactor (issue 15).
REFACTOR_BASE = "59bcf7349261bce19e69df036b4b6911794375f3"
# Epoch-row fields that measure the machine, not the trajectory.
MACHINE_FIELDS = frozenset({"train_time_s", "train_time_total_s", "elapsed_s", "cpu_time_s",
                            "examples_per_s", "peak_rss_mb", "device_memory_mb"})
# The cpu suite's settings for rt_sentiment (benchmarks/suites/cpu.toml).
FULL = ["--model-size", "small", "--epochs", "10", "--batch-size", "32", "--lr", "1e-3",
        "--num-devices", "1", "--set", "log_every=5", "--set", "eval_examples=800",
        "--set", "train_examples=1500"]
QUICK = ["--model-size", "tiny", "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
         "--num-devices", "1", "--set", "log_every=1", "--set", "eval_examples=64",
         "--set", "train_examples=160"]


def data_dir() -> str:
  """The stand-ins: the project's own data/ when it has one, else $GRADVAR_DATA_DIR."""
  own = ROOT / "data"
  if (own / "rt_sentiment").is_dir():
    return str(own)
  value = os.environ.get("GRADVAR_DATA_DIR")
  if not value:
    raise SystemExit("invariance: no data/ in the project and GRADVAR_DATA_DIR is not set")
  return value


def export(commit: str, folder: pathlib.Path) -> None:
  """Writes `commit`'s tree into `folder`; fails loudly when the clone lacks that commit."""
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                           capture_output=True, check=False)
  if archive.returncode:
    raise SystemExit(f"invariance: git archive {commit} failed (a shallow clone?): "
                     f"{archive.stderr.decode().strip()}")
  folder.mkdir(parents=True)
  subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)


def train(tree: pathlib.Path, workdir: pathlib.Path, args: list[str]) -> float:
  """Runs `python -m train` in `tree`; returns its wall time."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tree)}
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, "-m", "train", "--workdir", str(workdir), "--quiet", *args]
  t0 = time.perf_counter()
  done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise SystemExit(f"invariance: training in {tree} failed ({done.returncode}):\n"
                     f"{done.stderr[-3000:]}")
  return time.perf_counter() - t0


def _rows(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_READERS = {runs_lib.STEPS: records.read_steps, runs_lib.EPOCHS: records.read_epochs,
            runs_lib.EVALS: records.read_evals}


def _read(path: pathlib.Path) -> list[dict]:
  """A records file's rows as the records reader gives them (rows of every schema in today's
  form), each a flat dict: a readout `x` of a row's mapping is the key `readouts.x`."""
  out = []
  for row in _READERS[path.name](path):
    flat = row.as_dict()
    mapping = flat.pop(row.READOUTS, {})
    out.append({**flat, **{f"{row.READOUTS}.{k}": v for k, v in mapping.items()}})
  return out


def _same(a, b) -> bool:
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  return a == b and type(a) is type(b)


def differences(old: pathlib.Path, new: pathlib.Path) -> list[str]:
  """Every deterministic field that differs between two runs' records, as readable lines."""
  found = []

  def compare(where: str, a: dict, b: dict, ignore=frozenset()) -> None:
    for key in sorted((set(a) | set(b)) - ignore):
      if key not in a or key not in b:
        found.append(f"{where}: {key} only in {'new' if key in b else 'old'}")
      elif not _same(a[key], b[key]):
        found.append(f"{where}: {key} {a[key]!r} != {b[key]!r}")

  for name, ignore in ((runs_lib.STEPS, frozenset()), (runs_lib.EPOCHS, MACHINE_FIELDS),
                       (runs_lib.EVALS, MACHINE_FIELDS)):
    if name == runs_lib.EVALS and not (old / name).exists() and not (new / name).exists():
      continue  # a run without eval_every_steps writes none
    if not (old / name).exists() or not (new / name).exists():
      found.append(f"{name}: only in {'new' if (new / name).exists() else 'old'}")
      continue
    a, b = _read(old / name), _read(new / name)
    if len(a) != len(b):
      found.append(f"{name}: {len(a)} rows != {len(b)} rows")
    for i, (ra, rb) in enumerate(zip(a, b)):
      compare(f"{name} row {i + 1}", ra, rb, ignore)
  test_a = json.loads((old / runs_lib.RUN_INFO).read_text())["test"]
  test_b = json.loads((new / runs_lib.RUN_INFO).read_text())["test"]
  compare("run.json test", test_a, test_b)
  return found


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m benchmarks.invariance", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--base", default=REFACTOR_BASE, help="the older commit (default: the last "
                 "commit before the seams refactor)")
  p.add_argument("--task", default="rt_sentiment")
  p.add_argument("--strategy", default="gradvar")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quick", action="store_true", help="a tiny config instead of the cpu suite's")
  p.add_argument("--repeat", metavar="RUN_DIR",
                 help="train this finished run's config.json again with this tree and compare "
                      "(no --base tree)")
  p.add_argument("--out", help="keep both runs here (default: a temporary folder)")
  return p


def repeat(run: pathlib.Path, out: pathlib.Path) -> int:
  """Trains `run`'s config.json again with this tree into `out`/run; 0 if the records are equal."""
  config, info = run / runs_lib.CONFIG, runs_lib.finished_info(run)
  if not config.exists() or info is None:
    raise SystemExit(f"invariance: {run} is not a finished run (it needs config.json and a "
                     "run.json with an end)")
  new = out / "run"
  if new.exists():
    raise SystemExit(f"invariance: {new} exists; give another --out")
  # The run's own data_dir (null: the project's data/) is kept; its cache is made anew.
  seconds = train(ROOT, new, ["--config", str(config), "--cache-dir", str(out / ".cache")])
  found = differences(run, new)
  steps = len(_rows(new / runs_lib.STEPS))
  commit = (info.get("git") or {}).get("commit") or "?"
  return _verdict(f"{run} (made at {commit[:12]}) repeated with {ROOT} ({seconds:.0f} s): "
                  f"{steps} step rows compared", found)


def _verdict(what: str, found: list[str]) -> int:
  """Prints what was compared and the differences; the exit status (0: bitwise equal)."""
  print(f"invariance: {what}")
  for line in found[:40]:
    print("  " + line)
  print("invariance: " + ("records differ" if found else "every deterministic field is "
                          "bitwise equal"))
  return 1 if found else 0


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  if args.repeat:
    if not args.out:
      with tempfile.TemporaryDirectory(prefix="invariance-") as tmp:
        return repeat(pathlib.Path(args.repeat).resolve(), pathlib.Path(tmp))
    return repeat(pathlib.Path(args.repeat).resolve(), pathlib.Path(args.out).resolve())
  run_args = ["--task", args.task, "--strategy", args.strategy, "--seed", str(args.seed),
              "--data-dir", data_dir(), *(QUICK if args.quick else FULL)]
  with tempfile.TemporaryDirectory(prefix="invariance-") as tmp:
    out = pathlib.Path(args.out) if args.out else pathlib.Path(tmp)
    base_tree = out / "base-tree"
    export(args.base, base_tree)
    # Separate parents: each run tokenises into its own <workdir>/../.cache.
    old, new = out / "old" / "run", out / "new" / "run"
    t_old = train(base_tree, old, run_args)
    t_new = train(ROOT, new, run_args)
    found = differences(old, new)
    steps = len(_rows(new / runs_lib.STEPS))
    return _verdict(f"{args.task}/{args.strategy} seed {args.seed} "
                    f"({'quick' if args.quick else 'cpu suite'} config), base {args.base[:12]} "
                    f"({t_old:.0f} s) against {ROOT} ({t_new:.0f} s): {steps} step rows "
                    "compared", found)


if __name__ == "__main__":
  sys.exit(main())

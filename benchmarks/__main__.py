"""Command line of the benchmark harness (run from the repository root):

  python -m benchmarks compare --suite NAME [--tasks T ...] [--strategies S ...]
                               [--seeds N | --only-seeds S ...] [--tune] [--out DIR]
                               [--data-dir DIR]
  python -m benchmarks tune --suite NAME [--tasks T ...] [--strategies S ...] [--out DIR]
                            [--data-dir DIR]
  python -m benchmarks calibrate --suite NAME [--tasks T ...] [--out DIR] [--data-dir DIR]
  python -m benchmarks report DIR
  python -m benchmarks regime --suite NAME [--tasks T ...] [--out DIR] [--data-dir DIR]
  python -m benchmarks plan --suite NAME [--tasks T ...] [--strategies S ...] [--runs]

The order of a pre-registered comparison (a suite with [analysis]): `tune` (the LR grids, with
points added beyond an edge pick), `calibrate` (targets from the tuned reference strategy),
commit the suite file, then `compare --tune` (the evaluation runs at the tuned LRs, the controls
after their adaptive strategies).

`compare` checks first that the suite can start here (`benchmarks.preflight`: packages, configs,
data, output folder), and stops with one message if not; then it trains every task x strategy x
seed of a suite (skipping finished runs, resuming interrupted ones), then writes DIR/REPORT.md,
DIR/results.json and DIR/plots/ and prints the summary. `calibrate` runs the baseline on the
reference seeds and writes the validation-loss thresholds into the suite file. `report` rewrites
the report of an existing DIR without training.
DIR defaults to benchmarks/results/<suite name>.
"""

import argparse
import os
import pathlib
import sys

from benchmarks import compare as compare_lib
from benchmarks import suite as suite_lib

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def _names(values):
  if not values:
    return None
  return [n for v in values for n in v.split(",") if n]


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  def common(q):
    q.add_argument("--suite", required=True,
                   help="a name under benchmarks/suites/ (e.g. cpu) or a path to a .toml file")
    q.add_argument("--tasks", nargs="+", help="only these tasks of the suite")
    q.add_argument("--out", help="output folder (default: benchmarks/results/<suite name>)")
    q.add_argument("--data-dir", default=os.environ.get("GRADVAR_DATA_DIR"),
                   help="folder of the offline stand-ins (default: $GRADVAR_DATA_DIR, else the "
                        "project's data/)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")

  c = sub.add_parser("compare", help="run the suite's grid and write the report")
  common(c)
  c.add_argument("--strategies", nargs="+", help="only these strategies of the suite")
  which = c.add_mutually_exclusive_group()
  which.add_argument("--seeds", type=int, help="only the suite's first N seeds")
  which.add_argument("--only-seeds", type=int, nargs="+", metavar="SEED",
                     help="only these of the suite's seeds (to split an arm over two lanes)")
  c.add_argument("--tune", action="store_true",
                 help="also pick each strategy's LR from the suite's lr_grid on its tune_seeds, "
                      "then run the seeds at the picked LR")
  c.add_argument("--no-report", action="store_true", help="train only; `report DIR` later")
  t = sub.add_parser("tune", help="tune every strategy's LR on the tuning seeds (no evaluation)")
  common(t)
  t.add_argument("--strategies", nargs="+", help="only these strategies of the suite")
  k = sub.add_parser("calibrate", help="fix the validation-loss thresholds from reference runs")
  common(k)
  k.add_argument("--factor", type=float,
                 help=f"threshold = median best val loss x factor (default: the suite's, or "
                      f"{suite_lib.DEFAULT_FACTOR})")
  r = sub.add_parser("report", help="(re)write REPORT.md, results.json and plots of a folder")
  r.add_argument("dir", help="an output folder of `compare`")
  g = sub.add_parser("regime", help="each task's classical reference on the runs' data: "
                                    "DIR/regime.json for the report's regime check")
  common(g)
  n = sub.add_parser("plan", help="list the runs a suite asks for, without training any")
  n.add_argument("--suite", required=True, help="a name under benchmarks/suites/ or a path")
  n.add_argument("--tasks", nargs="+", help="only these tasks of the suite")
  n.add_argument("--strategies", nargs="+", help="only these strategies of the suite")
  n.add_argument("--runs", action="store_true", help="also every run's folder")
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parser().parse_args(argv)
  try:
    if args.command == "report":
      from benchmarks import report
      print(report.write(pathlib.Path(args.dir)))
      return 0
    suite = suite_lib.load(args.suite)
    if args.command == "plan":
      from benchmarks import plan
      print("\n".join(plan.lines(suite.narrow(_names(args.tasks), _names(args.strategies)),
                                 runs=args.runs)))
      return 0
    out = pathlib.Path(args.out) if args.out else RESULTS_DIR / suite.name
    out = out.resolve()
    if args.command == "regime":
      from benchmarks import regime
      return regime.run(suite, out, argv, tasks=_names(args.tasks), data_dir=args.data_dir)
    if args.command == "calibrate":
      return compare_lib.calibrate(suite, out, argv, tasks=_names(args.tasks),
                                   factor=args.factor, data_dir=args.data_dir,
                                   progress=not args.no_progress)
    if args.command == "tune":
      narrowed = suite.narrow(_names(args.tasks), _names(args.strategies))
      outcome = compare_lib.run_tuning(narrowed, out, argv, data_dir=args.data_dir,
                                       progress=not args.no_progress)
      print(f"{len(outcome.ran)} tuning runs trained, {len(outcome.skipped)} already finished, "
            f"{len(outcome.failed)} failed", file=sys.stderr)
      return 1 if outcome.failed else 0
    narrowed = suite.narrow(_names(args.tasks), _names(args.strategies), args.seeds,
                           args.only_seeds)
    # One message for what would stop every run (packages, configs, data, the output folder).
    from benchmarks import preflight
    if not preflight.check(narrowed, out, args.data_dir):
      return 2
    return compare_lib.compare(narrowed, out, argv, tune=args.tune, data_dir=args.data_dir,
                               progress=not args.no_progress, write_report=not args.no_report)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except compare_lib.Interrupted as e:
    print(f"interrupted ({e}); rerun the same command to continue", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())

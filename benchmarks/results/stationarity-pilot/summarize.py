"""The pilot's figures: drops, tests and validation-loss turns (README.md in this folder).

Usage, from the repository root: python benchmarks/results/stationarity-pilot/summarize.py
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
CPU_V2 = HERE.parent / "cpu-v2"


def _rows(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line]


def _turn(evals):
  """(step, val_loss) of the evaluation with the lowest validation loss."""
  best = min(evals, key=lambda r: r["val_loss"])
  return best["step"], best["val_loss"]


def main():
  for task_dir in sorted((HERE / "runs").glob("*")):
    task = task_dir.name
    for run in sorted((task_dir / "stationarity/lr0.001").glob("seed*")):
      steps = _rows(run / "steps.jsonl") if (run / "steps.jsonl").exists() else []
      info = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
      if not info.get("end"):
        print(f"{task} {run.name}: not finished ({len(steps)} steps logged)")
        continue
      total = len(steps)
      drops = [r["step"] for a, r in zip(steps, steps[1:])
               if r["readouts"]["drops"] > a["readouts"]["drops"]]
      tests, seen = [], set()
      for r in steps:
        o = r["readouts"]
        if o["test_step"] and o["test_step"] not in seen:
          seen.add(o["test_step"])
          half = (o["test_upper"] - o["test_lower"]) / 2
          tests.append((int(o["test_step"]), o["test_mean"], half))
      own = _turn(_rows(run / "evals.jsonl"))
      fixed = CPU_V2 / f"runs/{task}/fixed/lr0.001/{run.name}/evals.jsonl"
      ref = _turn(_rows(fixed)) if fixed.exists() else None
      print(f"{task} {run.name}: {total} steps; drops after steps {drops or 'none'}; "
            f"step's drops after {total // 2} and {3 * total // 4}; own val-loss minimum at "
            f"step {own[0]} ({own[1]:.4f}); cpu-v2 fixed same seed: "
            f"{f'step {ref[0]} ({ref[1]:.4f})' if ref else 'no run'}")
      same = ""
      if fixed.exists():
        a = [r["val_loss"] for r in _rows(run / "evals.jsonl")]
        b = [r["val_loss"] for r in _rows(fixed)]
        gap = max(abs(x - y) for x, y in zip(a, b))
        same = f"; val losses vs that fixed run: max |difference| {gap:.2g}"
      closest = min(abs(m) / h for _, m, h in tests)
      negative = all(m < 0 for _, m, _ in tests)
      print(f"  {len(tests)} tests, every mean < 0: {negative}; closest to 0: "
            f"|mean| = {closest:.1f} half-widths{same}")
      print("  tests (step: mean / half-width):",
            ", ".join(f"{s}: {m:+.3g}/{h:.3g}={m / h:+.1f}" for s, m, h in tests))


if __name__ == "__main__":
  main()

"""The tables of README.md's "Variants" section, from replay.json and the runs' records.

Usage, from the repository root, after replay.py's --json (README.md):

    PYTHONPATH=. python benchmarks/results/stationarity-pilot/replay.py \
      --json benchmarks/results/stationarity-pilot/replay.json
    python benchmarks/results/stationarity-pilot/variants.py
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
SUBSETS = ["a: all", "b: all but embeddings and norm-fed kernels",
           "d: kernels and embeddings (ndim >= 2)",
           "c1: head only (classifier/head, mlp_hidden)",
           "c2: non-kernel params (biases, norm scales)"]
BASES = {"leaves": "Adam", "leaves-wd1": "AdamW wd 1", "leaves-wd3": "AdamW wd 3",
         "leaves-wd10": "AdamW wd 10", "leaves-mwd3": "AdamW wd 3 on ndim>=2",
         "leaves-mwd10": "AdamW wd 10 on ndim>=2"}


def best(run: pathlib.Path) -> str:
  evals = [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines() if x]
  top = min(evals, key=lambda r: r["val_loss"])
  return f"{top['val_loss']:.3f} ({top['step']})"


def drops(run: pathlib.Path) -> str:
  rows = [json.loads(x) for x in (run / "steps.jsonl").read_text().splitlines() if x]
  out, prev = [], 1.0
  for r in rows:
    if r["readouts"]["lr_scale"] != prev:
      out.append(str(r["step"]))
      prev = r["readouts"]["lr_scale"]
  return ", ".join(out) or "none"


def main():
  replay = json.loads((HERE / "replay.json").read_text())
  print("| task | base (fixed LR 1e-3) | seed | " + " | ".join(s.split(":")[0] for s in SUBSETS)
        + " | best val loss (step) |")
  print("|---" * (4 + len(SUBSETS)) + "|")
  for task in ("rt_sentiment", "fashion_mnist"):
    for base, label in BASES.items():
      for seed, subsets in sorted(replay[task].get(base, {}).items()):
        folder = "leaves" if base == "leaves" else (
            "leaves-mwd" if "mwd" in base else "leaves-wd")
        run = HERE / folder / "runs" / task / base / "lr0.001" / seed
        cells = []
        for s in SUBSETS:
          r = subsets.get(s)
          cells.append("-" if r is None else str(r["first_pass"] or "never"))
        print(f"| {task} | {label} | {seed[4:]} | " + " | ".join(cells) + f" | {best(run)} |")
  print()
  print("| task | the real rule, seed 0 | drops | best val loss (step) |")
  print("|---|---|---|---|")
  for folder, names in (("rule-wd", ("rule-wd3", "rule-wd10")),
                        ("rule-mwd", ("rule-mwd3", "rule-mwd10"))):
    for task in ("rt_sentiment", "fashion_mnist"):
      for name in names:
        run = HERE / folder / "runs" / task / name / "lr0.001" / "seed0"
        if (run / "evals.jsonl").exists():
          print(f"| {task} | {name} | {drops(run)} | {best(run)} |")


if __name__ == "__main__":
  main()

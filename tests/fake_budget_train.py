"""A stand-in for `python -m train --config FILE` with evaluations: synthetic records, fast.

Four steps an epoch, an evaluation every 2 steps (evals.jsonl) and at each epoch's end
(epochs.jsonl). The validation loss at step s of a run of E epochs at LR lr and seed n is
0.5 + 0.01 (log10(lr) + 3)^2 + 0.01 (n mod 1000) + 1 / (1 + s), less 0.05 s / (4 E) for
`cosine` (a schedule that ends lower the shorter its run). Every run is appended to
<out>/calls.log.
"""

import json
import math
import pathlib
import sys

STEPS_PER_EPOCH, EVERY = 4, 2


def val_loss(strategy: str, lr: float, seed: int, epochs: int, step: int) -> float:
  loss = 0.5 + 0.01 * (math.log10(lr) + 3) ** 2 + 0.01 * (seed % 1000) + 1 / (1 + step)
  if strategy == "cosine":
    loss -= 0.05 * step / (STEPS_PER_EPOCH * epochs)
  return loss


def main(config_file: str) -> None:
  config = json.loads(pathlib.Path(config_file).read_text())
  workdir = pathlib.Path(config["workdir"])
  lr, seed, epochs, strategy = config["lr"], config["seed"], config["epochs"], config["strategy"]
  rows, evals = [], []
  for step in range(EVERY, STEPS_PER_EPOCH * epochs + 1, EVERY):
    loss = val_loss(strategy, lr, seed, epochs, step)
    evals.append({"step": step, "epoch": (step - 1) // STEPS_PER_EPOCH + 1, "examples": 8 * step,
                  "train_time_s": 0.1 * step, "val_loss": loss, "val_accuracy": 0.5,
                  "effective_lr": lr})
    if step % STEPS_PER_EPOCH:
      continue
    epoch = step // STEPS_PER_EPOCH
    rows.append({"cpu_time_s": 0.1, "device_memory_mb": None, "effective_lr": lr,
                 "effective_lr_mean": lr, "elapsed_s": 1.0 * epoch, "epoch": epoch,
                 "examples_per_s": 10.0, "lr_scale": None, "lr_scale_mean": None,
                 "peak_rss_mb": 100.0, "step": step, "train_accuracy": 0.5,
                 "train_loss": 0.7, "train_time_s": 0.4, "train_time_total_s": 0.4 * epoch,
                 "val_accuracy": 0.5, "val_loss": loss, "variability_mean": None})
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (workdir / "evals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
  (workdir / "run.json").write_text(json.dumps({"start": "s", "end": "e"}))
  out = pathlib.Path(config["cache_dir"]).parent
  with open(out / "calls.log", "a") as log:
    log.write(str(workdir.relative_to(out)) + "\n")


if __name__ == "__main__":
  main(sys.argv[sys.argv.index("--config") + 1])

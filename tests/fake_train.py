"""A stand-in for `python -m train --config FILE` in the runner's tests: synthetic records, fast.

The validation loss is a parabola in log10(lr) with its minimum at lr = 1e-3 (plus 0.01 per seed
past 1000, so tuning seeds differ); each epoch's effective_lr_mean is lr x (1 + seed / 10) and
lr x (0.5 + seed / 10). Every run it makes is appended to <out>/calls.log.
"""

import json
import math
import pathlib
import sys


def main(config_file: str) -> None:
  config = json.loads(pathlib.Path(config_file).read_text())
  workdir = pathlib.Path(config["workdir"])
  lr, seed = config["lr"], config["seed"]
  loss = 0.5 + 0.01 * (math.log10(lr) + 3) ** 2 + 0.01 * (seed % 1000)
  rows = []
  for epoch, scale in ((1, 1 + seed / 10), (2, 0.5 + seed / 10)):
    # effective_lr is the epoch's last step's, not its mean: matched must read the mean.
    rows.append({"cpu_time_s": 0.1, "device_memory_mb": None, "effective_lr": 2 * lr * scale,
                 "effective_lr_mean": lr * scale, "elapsed_s": 1.0 * epoch, "epoch": epoch,
                 "examples_per_s": 10.0, "lr_scale": None, "lr_scale_mean": None,
                 "peak_rss_mb": 100.0, "step": 3 * epoch, "train_accuracy": 0.5,
                 "train_loss": 0.7, "train_time_s": 0.5, "train_time_total_s": 0.5 * epoch,
                 "val_accuracy": 0.5, "val_loss": loss + (0.1 if epoch == 1 else 0.0),
                 "variability_mean": None})
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (workdir / "run.json").write_text(json.dumps({"start": "s", "end": "e"}))
  out = pathlib.Path(config["cache_dir"]).parent
  with open(out / "calls.log", "a") as log:
    log.write(str(workdir.relative_to(out)) + "\n")


if __name__ == "__main__":
  main(sys.argv[sys.argv.index("--config") + 1])

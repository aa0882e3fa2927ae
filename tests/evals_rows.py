"""evals.jsonl rows for the benchmarks' tests, written as `train.records` writes them."""

import json
import pathlib

from train import records


def row(**fields) -> records.EvalRow:
  """An EvalRow with the given fields; the others None."""
  blank = {f: None for f in ("effective_lr", "train_time_s",
                             "val_loss", "val_accuracy")}
  return records.EvalRow(**{**blank, **fields})


def write(folder: pathlib.Path, val_losses, every: int = 2, batch: int = 16,
          seconds_per_step: float = 0.5, steps_per_epoch: int = 4) -> None:
  """An evals.jsonl with an evaluation every `every` steps, losses in the order given."""
  rows = []
  for i, v in enumerate(val_losses):
    step = (i + 1) * every
    rows.append(row(step=step, epoch=(step - 1) // steps_per_epoch + 1, examples=step * batch,
                    train_time_s=step * seconds_per_step, val_loss=v,
                    val_accuracy=None if v is None else 1.0 - v / 2, effective_lr=1e-3))
  (folder / "evals.jsonl").write_text("".join(json.dumps(r.as_dict()) + "\n" for r in rows))

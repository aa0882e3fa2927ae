"""evals.jsonl rows for the benchmarks' tests, as `train.records` writes them.

`train.records.EvalRow` and `read_evals` come with evaluation in steps (issue 17, item 3). Until
that branch is merged, `ensure_reader` puts a minimal stand-in with the same fields on
`train.records` for the test's duration; once the real ones exist it leaves them alone, so the
tests then read the rows with the project's own reader.
"""

import dataclasses
import json
import pathlib
from typing import Optional

from train import records

FIELDS = ("step", "epoch", "examples", "train_time_s", "val_loss", "val_accuracy",
          "effective_lr", "lr_scale", "noise_to_signal")


@dataclasses.dataclass(frozen=True)
class StandInEvalRow:
  step: int
  epoch: int
  examples: int
  train_time_s: Optional[float]
  val_loss: Optional[float]
  val_accuracy: Optional[float]
  effective_lr: Optional[float] = None
  lr_scale: Optional[float] = None
  noise_to_signal: Optional[float] = None


def _stand_in_read_evals(path, missing_ok=False):
  path = pathlib.Path(path)
  if not path.exists():
    if missing_ok:
      return []
    raise FileNotFoundError(path)
  return [StandInEvalRow(**json.loads(line)) for line in path.read_text().splitlines()
          if line.strip()]


def ensure_reader(monkeypatch) -> None:
  if not hasattr(records, "read_evals"):
    monkeypatch.setattr(records, "read_evals", _stand_in_read_evals, raising=False)
    monkeypatch.setattr(records, "EvalRow", StandInEvalRow, raising=False)


def row(**fields):
  """An EvalRow (the project's, or the stand-in) with the given fields; others None."""
  cls = getattr(records, "EvalRow", StandInEvalRow)
  blank = {f: None for f in FIELDS}
  return cls(**{**blank, **fields})


def write(folder: pathlib.Path, val_losses, every: int = 2, batch: int = 16,
          seconds_per_step: float = 0.5, steps_per_epoch: int = 4) -> None:
  """An evals.jsonl with an evaluation every `every` steps, losses in the order given."""
  lines = []
  for i, v in enumerate(val_losses):
    step = (i + 1) * every
    lines.append({"step": step, "epoch": (step - 1) // steps_per_epoch + 1,
                  "examples": step * batch, "train_time_s": step * seconds_per_step,
                  "val_loss": v, "val_accuracy": None if v is None else 1.0 - v / 2,
                  "effective_lr": 1e-3, "lr_scale": None, "noise_to_signal": None})
  (folder / "evals.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))

"""A run folder, `<out>/<kind>/<task>/<strategy>/lr<lr>/seed<n>/`: its files, records and state.

This module alone knows the names of the files in a run folder. `python -m train` writes the
records (`run.json`, `config.json`, `epochs.jsonl`, `steps.jsonl`, `evals.jsonl`); the comparison
runner adds `run_config.json` (what the run is started from), `bench.json` (its attempts) and,
for a control, `control.json` (which run it was derived from, and the LR it got).

A run's *state*, from its run.json:

- `finished`: run.json holds `"end"` (written last, once the run has finished);
- `stopped`: run.json holds `"stopped"` (preempted, or a non-finite loss without
  `skip_nonfinite`); the next `compare` resumes it from its checkpoint;
- `failed`: the folder exists without either (the process died, or it is running now);
- `absent`: no folder.

Only a finished run's rows are read: an unfinished run's files may be being written.
"""

import dataclasses
import json
import pathlib
from typing import Any, Optional

from benchmarks import catalogue
from benchmarks import metrics
from train import records

RUN_INFO = records.RUN_INFO  # "run.json"
CONFIG = "config.json"
RUN_CONFIG = "run_config.json"
EPOCHS = "epochs.jsonl"
STEPS = "steps.jsonl"
EVALS = "evals.jsonl"
BENCH = "bench.json"
CONTROL = "control.json"
LOG = "train.log"

FINISHED, STOPPED, FAILED, ABSENT = "finished", "stopped", "failed", "absent"


def read_json(path: pathlib.Path) -> dict:
  """A JSON file's object; empty when the file is missing or unreadable (being written)."""
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return {}


def finished(info: dict) -> bool:
  """Whether a run.json's content says the run has finished."""
  return bool(info.get("end"))


def state(workdir: pathlib.Path, info: Optional[dict] = None) -> str:
  """FINISHED, STOPPED, FAILED or ABSENT (see above); `info` is run.json where already read."""
  workdir = pathlib.Path(workdir)
  info = read_json(workdir / RUN_INFO) if info is None else info
  if finished(info):
    return FINISHED
  if info.get("stopped"):
    return STOPPED
  return FAILED if workdir.exists() else ABSENT


def finished_info(workdir: pathlib.Path) -> Optional[dict]:
  """run.json's content when the run has finished, else None."""
  info = read_json(pathlib.Path(workdir) / RUN_INFO)
  return info if finished(info) else None


@dataclasses.dataclass
class RunRecord:
  """One run folder's records."""
  path: pathlib.Path
  info: dict
  epochs: list[records.EpochRow]
  steps: list[records.StepRow]
  bench: dict
  # evals.jsonl's rows (`records.EvalRow`); None for a run without one (before
  # `eval_every_steps`), which then has no steps-to-target figures.
  evals: Optional[list] = None

  @property
  def finished(self) -> bool:
    return finished(self.info)

  def metrics(self, threshold: Optional[float], explode_factor: float = 2.0) -> dict:
    """The run's figures: `metrics.run_metrics`, then each registered metric's (`catalogue`)."""
    out = metrics.run_metrics(self.epochs, self.steps, self.info.get("test"), threshold,
                              explode_factor, self.bench, self.info.get("compile_s"),
                              evals=self.evals)
    return catalogue.add_registered(self, threshold, out)


def _read_evals(path: pathlib.Path) -> Optional[list]:
  if not path.exists():
    return None
  return records.read_evals(path)


def read_run(workdir: pathlib.Path, info: Optional[dict] = None) -> RunRecord:
  """A run folder's records; `info` is its run.json where the caller has read it already."""
  info = read_json(workdir / RUN_INFO) if info is None else info
  records.schema_version(info, workdir / RUN_INFO)
  return RunRecord(workdir, info, records.read_epochs(workdir / EPOCHS, missing_ok=True),
                   records.read_steps(workdir / STEPS, missing_ok=True),
                   read_json(workdir / BENCH), _read_evals(workdir / EVALS))


def read_finished(workdir: pathlib.Path) -> Optional[RunRecord]:
  """The run's records when it has finished, else None (its rows are not read)."""
  info = finished_info(workdir)
  return None if info is None else read_run(workdir, info)


def run_infos(out: pathlib.Path) -> list[dict]:
  """Every run.json under a comparison folder (`<kind>/<task>/<strategy>/<lr>/<seed>/`)."""
  infos = [read_json(p) for p in sorted(pathlib.Path(out).glob(f"*/*/*/*/*/{RUN_INFO}"))]
  return [i for i in infos if i]


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
  """Writes JSON through a temporary file, so a reader never sees half of it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)

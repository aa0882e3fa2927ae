"""Per-step cost of each strategy's compiled train step on a suite's tasks, side by side.

  python -m benchmarks.perf.step_cost --suite NAME --out DIR [--tasks T ...]
                                      [--strategies S ...] [--repeats 20] [--steps 10]

For each task, every strategy's run is set up as the suite's first evaluation seed would be
(`train.loop.setup`: the same model, batch, devices and optimizer), its train step compiled ahead
of time, then timed in interleaved repeats: each repeat runs `--steps` steps of every strategy in
turn, the order rotating between repeats, so that whatever else the machine does hits all of them
alike (a run that computes gns's groups on every k-th step only, `gns_every`, runs `--steps`
rounded up to a multiple of k). The figure is the median over repeats of the seconds per step,
and the ratio to `fixed`'s. The report's time to target is steps to target times this ratio,
not a wall clock of runs that shared a machine at different moments.

Writes DIR/step_cost.json: `{"command", "hardware", "date", "repeats", "steps", "tasks": {task:
{"seconds_per_step": {strategy: s}, "ratios": {strategy: r}, "samples": {strategy: [...]},
"command", "hardware", "date", ...}}}`. Each task carries the command that measured it; a run on
some tasks (`--tasks`) keeps the other tasks already in the file.
"""

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Optional

import jax

from benchmarks import suite as suite_lib
from train import control_kinds
from train import records

STEP_COST_FILE = "step_cost.json"
REFERENCE = "fixed"
# Distinct batches cycled through while timing: the step sees real, varying inputs.
_BATCHES = 4


@dataclasses.dataclass
class _Timed:
  step: object
  state: object
  rng: object
  batches: list
  # gns_every of a grouped run (its groups on every k-th step): it is timed over multiples of k.
  every: int = 1


def _prepare(run: suite_lib.Run, workdir: pathlib.Path, cache: pathlib.Path,
             data_dir: Optional[str]) -> _Timed:
  from train import loop
  config = dataclasses.replace(run.config(str(workdir)), cache_dir=str(cache),
                               data_dir=data_dir, quiet=True)
  control = suite_lib.control_of(run.strategy)
  stand_in = control and control_kinds.get(control[0]).stand_in
  if stand_in:  # a control that follows a recorded run (replay-X) is timed on a stand-in
    options = stand_in(workdir.parent / f"{run.strategy}-source", control[1], run.lr)
    config = dataclasses.replace(config, **options)
  s = loop.setup(config)
  state = s.launcher.put_state(loop.init_state(s))
  batches = []
  with s.pipeline.train_iterator(place=s.launcher.placement()) as it:
    for _ in range(min(_BATCHES, s.pipeline.steps_per_epoch)):
      batches.append(next(it))
  rng = jax.random.key(config.seed + 1)
  step = s.launcher.compile(loop.train_step(s), state, batches[0], rng)
  return _Timed(step, state, rng, batches, config.gns_every if s.microbatches else 1)


def _time(t: _Timed, steps: int, offset: int) -> float:
  """Seconds per step over `steps` steps (the state carries on, as in training)."""
  metrics = None
  start = time.perf_counter()
  for i in range(steps):
    t.state, metrics = t.step(t.state, t.batches[(offset + i) % len(t.batches)], t.rng)
  jax.block_until_ready((t.state, metrics))
  return (time.perf_counter() - start) / steps


def measure_task(suite: suite_lib.Suite, task: str, strategies, repeats: int, steps: int,
                 data_dir: Optional[str] = None, progress=None) -> dict:
  """One task's per-step seconds per strategy (median over interleaved repeats) and ratios."""
  if REFERENCE not in strategies:
    raise ValueError(f"--strategies: the ratios are relative to {REFERENCE!r}, which must be "
                     f"among them (got {', '.join(strategies)})")
  with tempfile.TemporaryDirectory(prefix="step_cost_") as tmp:
    tmp = pathlib.Path(tmp)
    timed = {s: _prepare(suite.run(task, s, suite.seeds[0]), tmp / s, tmp / ".cache", data_dir)
             for s in strategies}
    for t in timed.values():  # one untimed step each: first-call overheads stay out
      _time(t, 1, 0)
    samples = {s: [] for s in strategies}
    # Whole multiples of each run's k: every window holds the same share of grouped steps.
    counts = {s: -(-steps // t.every) * t.every for s, t in timed.items()}
    order = list(strategies)
    for r in range(repeats):
      for s in order[r % len(order):] + order[:r % len(order)]:
        samples[s].append(_time(timed[s], counts[s], r * counts[s]))
      if progress:
        progress(task, r + 1, repeats)
  seconds = {s: statistics.median(v) for s, v in samples.items()}
  return {"seconds_per_step": seconds,
          "ratios": {s: v / seconds[REFERENCE] for s, v in seconds.items()},
          "samples": samples,
          "gns_every": {s: t.every for s, t in timed.items() if t.every > 1}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.step_cost", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suite", required=True, help="a suite name or a .toml path")
  parser.add_argument("--out", required=True, help="folder for step_cost.json (the comparison's)")
  parser.add_argument("--tasks", nargs="+", help="only these tasks of the suite")
  parser.add_argument("--strategies", nargs="+",
                      help=f"only these strategies of the suite ({REFERENCE!r} among them)")
  parser.add_argument("--repeats", type=int, default=20, help="interleaved repeats")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
  parser.add_argument("--data-dir", help="folder of the offline stand-ins")
  given = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(given)
  try:
    if args.repeats < 1 or args.steps < 1:
      raise ValueError("--repeats and --steps must be >= 1")
    suite = suite_lib.load(args.suite).narrow(args.tasks, args.strategies)
    if REFERENCE not in suite.strategies:
      raise ValueError(f"the suite's strategies must include {REFERENCE!r}, the ratios' "
                       "reference")

    def progress(task, done, total):
      print(f"\r  {task}: repeat {done}/{total}", end="", file=sys.stderr, flush=True)

    path = pathlib.Path(args.out) / STEP_COST_FILE
    kept = {}
    if path.exists():  # a run on some tasks keeps the others' earlier measurements
      try:
        kept = json.loads(path.read_text()).get("tasks") or {}
      except ValueError as e:  # refused before minutes of timing, not after
        raise ValueError(f"{path} is not JSON ({e}); move it away or fix it") from None
    tasks = {}
    for task in suite.tasks:
      strategies = list(suite.task_strategies(task))  # the task's arms
      if REFERENCE not in strategies:
        raise ValueError(f"{task}: {REFERENCE!r}, the ratios' reference, is not one of its arms")
      tasks[task] = measure_task(suite, task, strategies, args.repeats, args.steps,
                                 args.data_dir, progress)
      print(file=sys.stderr)
      for s in strategies:
        print(f"{task:<16} {s:<24} {tasks[task]['seconds_per_step'][s] * 1e3:10.3f} ms/step "
              f"x{tasks[task]['ratios'][s]:.3f}")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  measured = {"command": "python -m benchmarks.perf.step_cost " + " ".join(given),
              "date": records.now(), "git": records.git_commit(),
              "hardware": records.hardware(), "repeats": args.repeats, "steps": args.steps}
  for entry in tasks.values():
    entry.update(measured)
  payload = {**measured, "reference": REFERENCE, "tasks": {**kept, **tasks}}
  path.write_text(json.dumps(payload, indent=2) + "\n")
  print(f"wrote {path}" + (f" (kept {', '.join(sorted(set(kept) - set(tasks)))})"
                           if set(kept) - set(tasks) else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())

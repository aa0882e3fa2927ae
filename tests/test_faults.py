"""Non-finite steps: stop with an error by default, skip and count them with `--skip-nonfinite`
(and stop when more than 10 come in a row).

The fault is real and data-dependent: the LSTM's embedding table is made smaller than the
vocabulary (`model.vocab_size`), so a batch holding one of the rarest words looks up a row past
the end of the table, which `jnp.take` fills with NaN. The test knows from the pipeline itself
which steps' batches hold such a word, and so which steps must fail.
"""

import itertools
import json
import math

import jax
import numpy as np
import pytest
from test_resume import EPOCHS
from test_resume import EVERY
from test_resume import STEPS_PER_EPOCH
from test_resume import cache_dir  # noqa: F401  (a module-scoped fixture: the token cache)
from test_resume import checkpoint_steps
from test_resume import env  # noqa: F401  (a module-scoped fixture: the subprocess environment)
from test_resume import final_params
from test_resume import jsonl
from test_resume import last_checkpoint
from test_resume import resumed_from
from test_resume import run
from test_resume import train_args

from train import config as config_lib
from train import loop


@pytest.fixture(scope="module")
def batch_maxima(cache_dir, data_dir, tmp_path_factory):
  """The largest token id of each step's batch (steps of 4 epochs); the batches do not depend
  on the number of epochs."""
  config = config_lib.Config(
      task="rt_sentiment", workdir=str(tmp_path_factory.mktemp("unused")), model_size="tiny",
      epochs=EPOCHS, batch_size=8, num_devices=2, train_examples=64, eval_examples=16,
      cache_dir=str(cache_dir), data_dir=str(data_dir))
  s = loop.setup(config)
  assert s.pipeline.steps_per_epoch == STEPS_PER_EPOCH
  top = [int(s.pipeline.train_batch(step)["token_ids"].max())
         for step in range(STEPS_PER_EPOCH * 4)]
  return top, s.inputs.vocab_size


@pytest.fixture(scope="module")
def poison(batch_maxima):
  """An embedding size that makes a few steps non-finite, and those steps (1-based)."""
  top, vocab_size = batch_maxima
  top = top[:STEPS_PER_EPOCH * EPOCHS]
  # The largest table size whose first bad step comes after the first checkpoint (step 3), so
  # that a good checkpoint exists when the run stops, and that leaves most steps finite.
  for size in range(vocab_size - 1, 2, -1):
    bad = [step + 1 for step, t in enumerate(top) if t >= size]
    if bad and bad[0] > EVERY and len(bad) <= len(top) // 2:
      return size, bad
  pytest.fail(f"no table size gives a usable fault pattern; batch maxima {top}")


@pytest.fixture(scope="module")
def persistent_poison(batch_maxima):
  """An embedding size and a number of epochs whose run has more than 10 non-finite steps in a
  row, after a finite step past step EVERY + 1; and the first step of that row."""
  top, vocab_size = batch_maxima
  limit = loop.MAX_CONSECUTIVE_NONFINITE
  for epochs in range(EPOCHS, len(top) // STEPS_PER_EPOCH + 1):
    for size in range(vocab_size - 1, 2, -1):
      bad = [t >= size for t in top[:epochs * STEPS_PER_EPOCH]]
      for first in range(EVERY + 2, len(bad) - limit + 1):
        if not bad[first - 2] and all(bad[first - 1:first + limit]):
          return size, epochs, first
  pytest.fail(f"no table size gives {limit + 1} non-finite steps in a row; batch maxima {top}")


def fault_args(workdir, cache_dir, size, *extra):
  return train_args(workdir, cache_dir, "--set", f"model.vocab_size={size}",
                    "--set", "model.word_dropout_rate=0.0", *extra)


@pytest.fixture(scope="module")
def skipped_run(poison, env, cache_dir, tmp_path_factory):
  size, _ = poison
  workdir = tmp_path_factory.mktemp("skip") / "run"
  result = run(fault_args(workdir, cache_dir, size, "--skip-nonfinite"), env)
  assert result.returncode == 0, result.stderr
  return workdir


def _finite(tree) -> bool:
  return all(np.isfinite(x).all() for x in jax.tree.leaves(tree) if np.issubdtype(x.dtype,
                                                                                  np.floating))


@pytest.mark.slow
def test_skip_nonfinite_skips_and_counts_exactly_the_bad_steps(poison, skipped_run):
  _, bad = poison
  rows = jsonl(skipped_run / "epochs.jsonl")
  assert [r["nonfinite_steps"] for r in rows] == [
      sum(1 for b in bad if (b - 1) // STEPS_PER_EPOCH == e) for e in range(EPOCHS)]
  # Epoch means are over the finite steps; the step rows show the skipped ones as null.
  assert all(math.isfinite(r["train_loss"]) for r in rows)
  steps = jsonl(skipped_run / "steps.jsonl")
  assert [r["step"] for r in steps if r["loss"] is None] == bad
  expected_loss = np.mean([r["loss"] for r in steps[:STEPS_PER_EPOCH] if r["loss"] is not None])
  np.testing.assert_allclose(rows[0]["train_loss"], expected_loss, rtol=1e-5)
  # optax.apply_if_finite skipped those updates: its own count agrees, and the state is finite.
  _, state, _ = last_checkpoint(skipped_run)
  assert int(state["train"]["opt_state"]["total_notfinite"]) == len(bad)
  assert _finite(state) and _finite(final_params(skipped_run))
  assert json.loads((skipped_run / "run.json").read_text())["end"] is not None


@pytest.mark.slow
def test_nonfinite_stops_naming_the_step_keeps_the_good_checkpoint_and_resumes_skipping(
    poison, skipped_run, env, cache_dir, tmp_path):
  size, bad = poison
  workdir = tmp_path / "run"
  result = run(fault_args(workdir, cache_dir, size), env)
  assert result.returncode == 3, result.stderr
  first = bad[0]
  epoch = (first - 1) // STEPS_PER_EPOCH + 1
  assert f"non-finite loss or gradient at step {first} (epoch {epoch})" in result.stderr
  run_json = json.loads((workdir / "run.json").read_text())
  assert run_json["end"] is None and run_json["stopped"]["step"] == first
  # Only the checkpoints from before the bad step exist, and they are finite.
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
  due = {s for s in range(1, first) if s % EVERY == 0 or s % STEPS_PER_EPOCH == 0}
  assert saved == sorted(due)[-3:]
  step, state, _ = last_checkpoint(workdir)
  assert step == saved[-1] and _finite(state)
  # The stopped run continues with the bad steps skipped, and ends where the skipping run did.
  result = run(fault_args(workdir, cache_dir, size, "--skip-nonfinite", "--resume"), env)
  assert result.returncode == 0, result.stderr
  assert resumed_from(result.stderr) == saved[-1]
  assert ([r["nonfinite_steps"] for r in jsonl(workdir / "epochs.jsonl")]
          == [r["nonfinite_steps"] for r in jsonl(skipped_run / "epochs.jsonl")])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               final_params(workdir), final_params(skipped_run))


@pytest.mark.slow
def test_more_than_10_nonfinite_steps_in_a_row_stop_a_skipping_run(persistent_poison, env,
                                                                   cache_dir, tmp_path):
  size, epochs, first = persistent_poison
  limit = loop.MAX_CONSECUTIVE_NONFINITE
  # Checkpoints at the 10th non-finite step in a row (and every epoch): the most that are skipped.
  every = first + limit - 1
  workdir = tmp_path / "run"
  result = run(fault_args(workdir, cache_dir, size, "--skip-nonfinite", "--epochs", str(epochs),
                          "--checkpoint-every", str(every)), env)
  assert result.returncode == 3, result.stderr
  # Steps first .. first + 9 are skipped; optax.apply_if_finite applies the 11th in a row.
  stop = first + limit
  epoch = (stop - 1) // STEPS_PER_EPOCH + 1
  assert (f"non-finite loss or gradient at step {stop} (epoch {epoch}): more than 10 "
          "consecutive non-finite steps" in result.stderr)
  run_json = json.loads((workdir / "run.json").read_text())
  assert run_json["end"] is None and run_json["stopped"]["step"] == stop
  # Found at the first host sync from that step on (a checkpoint or an epoch's end), before it
  # saves anything: the checkpoints are those due before, the newest with 10 skipped in a row.
  def due(s):
    return s % every == 0 or s % STEPS_PER_EPOCH == 0
  found = next(s for s in itertools.count(stop) if due(s))
  saved = [s for s in range(1, found) if due(s)][-3:]
  assert checkpoint_steps(workdir) == saved and saved[-1] == every
  _, state, _ = last_checkpoint(workdir)
  assert _finite(state) and int(state["train"]["opt_state"]["notfinite_count"]) == limit

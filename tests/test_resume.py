"""Checkpoints and `--resume`: real `kill -9`, SIGTERM and Ctrl-C of `python -m train` subprocesses.

Every training subprocess is the same tiny run (the LSTM task on its stand-in, 2 CPU devices,
2 epochs of 8 steps, a checkpoint every 3 steps) and shares one JAX compilation cache, so only
the first one compiles. Runs that are interrupted and resumed must end bitwise equal to the
uninterrupted reference: final params, the whole last checkpoint (optimizer state and gradvar
ring buffer included) and the deterministic record fields.

The signals are raised by the run itself right after a given step (`GRADVAR_TEST_SIGNALS`, see
`train.loop`), so each test knows the exact step it stops at and the exact checkpoints it leaves.
A SIGKILL raised so is a real `kill -9`: the process dies there, without running any more code.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import fake_strategies
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train import checkpoint
from train import config as config_lib
from train import loop
from train import records

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH, EPOCHS, EVERY, WINDOW = 8, 2, 3, 5  # gradvar's default window
DETERMINISTIC_EPOCH_FIELDS = (
    "epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "effective_lr",
    "effective_lr_mean", "readout_means")


def subprocess_env(tmp_path_factory, data_dir) -> dict[str, str]:
  """The environment of a training subprocess: 2 CPU devices and the session's compile cache."""
  cache = tmp_path_factory.getbasetemp() / "jax-compilation-cache"
  cache.mkdir(exist_ok=True)
  # CPU whatever the machine: bitwise resumes on GPU need the determinism flags (README).
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
          "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "GRADVAR_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
          "TF_CPP_MIN_LOG_LEVEL": "3"}


def train_args(workdir, cache_dir, *extra) -> list[str]:
  return [sys.executable, "-m", "train", "--task", "rt_sentiment", "--strategy", "gradvar",
          "--model-size", "tiny", "--epochs", str(EPOCHS), "--batch-size", "8",
          "--num-devices", "2", "--workdir", str(workdir), "--quiet",
          "--checkpoint-every", str(EVERY), "--set", "train_examples=64",
          "--set", "eval_examples=16", "--set", "log_every=1", "--set", f"cache_dir={cache_dir}",
          *extra]


def _default_sigint():
  # A child of a background job inherits SIGINT ignored, and Python then keeps it ignored; a run
  # started from a terminal, as Ctrl-C meets it, has the default (KeyboardInterrupt) instead.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args, env, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                        preexec_fn=_default_sigint)


def with_signals(env, signals: str) -> dict[str, str]:
  """`env` with the signals the run raises on itself, e.g. "SIGTERM@5" (see `train.loop`)."""
  return {**env, "GRADVAR_TEST_SIGNALS": signals}


def checkpoint_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in pathlib.Path(workdir, "checkpoints").iterdir())


def due(step: int) -> bool:
  """Whether the runs of `train_args` checkpoint at `step` (every EVERY steps, every epoch)."""
  return step % EVERY == 0 or step % STEPS_PER_EPOCH == 0


def resumed_from(stderr: str) -> int:
  line = next(l for l in stderr.splitlines() if "resuming" in l)
  return int(line.split(" from step ")[1].split()[0])


def jsonl(path) -> list[dict]:
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]


def last_checkpoint(workdir):
  """The newest checkpoint's arrays and metadata, read without a target (plain containers)."""
  with ocp.CheckpointManager(pathlib.Path(workdir, "checkpoints").absolute()) as manager:
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return step, restored["state"], restored["meta"]


def final_params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(pathlib.Path(workdir, "final").absolute())


def assert_same_run(workdir, reference) -> None:
  """Bitwise the same end state and the same deterministic records, with no row twice."""
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(reference))
  step, state, meta = last_checkpoint(workdir)
  ref_step, ref_state, ref_meta = last_checkpoint(reference)
  assert step == ref_step == STEPS_PER_EPOCH * EPOCHS
  # The whole TrainState: params, opt_state with Adam's moments and gradvar's ring buffer, RNG.
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)
  assert meta["digest"] == ref_meta["digest"] and meta["data"] == ref_meta["data"]
  assert jsonl(pathlib.Path(workdir, "steps.jsonl")) == jsonl(pathlib.Path(reference,
                                                                           "steps.jsonl"))
  rows = jsonl(pathlib.Path(workdir, "epochs.jsonl"))
  ref_rows = jsonl(pathlib.Path(reference, "epochs.jsonl"))
  assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
  assert ([{k: r.get(k) for k in DETERMINISTIC_EPOCH_FIELDS} for r in rows]
          == [{k: r.get(k) for k in DETERMINISTIC_EPOCH_FIELDS} for r in ref_rows])
  run_json = json.loads(pathlib.Path(workdir, "run.json").read_text())
  assert run_json["end"] is not None and "stopped" not in run_json
  assert run_json["test"] == json.loads(pathlib.Path(reference, "run.json").read_text())["test"]


def assert_same_evals(workdir, reference) -> None:
  """The same evals.jsonl, bitwise in every field but the measured training clock."""
  def rows(run):
    return [{k: v for k, v in r.items() if k != "train_time_s"}
            for r in jsonl(pathlib.Path(run, "evals.jsonl"))]
  assert rows(workdir) == rows(reference)


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir):
  return subprocess_env(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env, cache_dir):
  """An uninterrupted run (it also fills the compilation cache for the others)."""
  workdir = tmp_path_factory.mktemp("reference") / "run"
  result = run(train_args(workdir, cache_dir), env)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.splitlines()[-1])["epoch"] == EPOCHS
  # Checkpoints: every 3 steps and after each epoch, the newest 3 kept.
  assert checkpoint_steps(workdir) == [12, 15, 16]
  return workdir


def copy_run(reference, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  return workdir


@pytest.mark.slow
def test_kill_9_mid_window_and_mid_epoch_then_resume_is_bitwise_equal(reference, env, cache_dir,
                                                                       tmp_path):
  workdir = tmp_path / "run"
  args = train_args(workdir, cache_dir)
  # Killed twice, the step after a checkpoint: at step 4 (checkpoint 3 saved), then at step 10 of
  # the resumed run (checkpoints 6, 8 and 9 saved, the newest 3 kept).
  for attempt, (kill_at, saved) in enumerate([(4, [3]), (10, [6, 8, 9])]):
    result = run(args + (["--resume"] if attempt else []),
                 with_signals(env, f"SIGKILL@{kill_at}"))
    assert result.returncode == -signal.SIGKILL, result.stderr
    run_json = json.loads((workdir / "run.json").read_text())
    assert run_json["end"] is None and "stopped" not in run_json
    assert checkpoint_steps(workdir) == saved
    # Mid-epoch and mid-window: the ring buffer holds a partial window, the epoch is half done.
    assert saved[-1] % STEPS_PER_EPOCH and saved[-1] % WINDOW
    # The killed step's row was never written; every row up to the checkpoint was.
    assert [r["step"] for r in jsonl(workdir / "steps.jsonl")] == list(range(1, saved[-1] + 1))
  result = run(args + ["--resume"], env)
  assert result.returncode == 0, result.stderr
  assert resumed_from(result.stderr) == 9
  assert len(json.loads((workdir / "run.json").read_text())["resumes"]) == 2
  assert_same_run(workdir, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name, step", [("SIGTERM", 5), ("SIGINT", STEPS_PER_EPOCH)])
def test_a_signal_saves_at_its_step_and_exits_then_resume_is_bitwise_equal(
    name, step, reference, env, cache_dir, tmp_path):
  """SIGTERM mid-epoch saves at that step; SIGINT (Ctrl-C) at an epoch's last step saves after
  the epoch's evaluation and record."""
  workdir = tmp_path / "run"
  result = run(train_args(workdir, cache_dir), with_signals(env, f"{name}@{step}"))
  assert result.returncode == 75, result.stderr  # EX_TEMPFAIL: resume me
  epoch = (step - 1) // STEPS_PER_EPOCH + 1
  assert (f"stopped: {name}: saved a checkpoint at step {step} (epoch {epoch})"
          in result.stderr and "--resume" in result.stderr)
  run_json = json.loads((workdir / "run.json").read_text())
  assert run_json["end"] is None
  assert {k: v for k, v in run_json["stopped"].items() if k != "time"} == {
      "reason": name, "step": step, "epoch": epoch}
  # The checkpoints due before it, and one where it stopped; the newest 3 kept.
  assert checkpoint_steps(workdir) == ([s for s in range(1, step) if due(s)] + [step])[-3:]
  # Every step up to the checkpoint is in the records, none after it; the epochs it finished.
  assert [r["step"] for r in jsonl(workdir / "steps.jsonl")] == list(range(1, step + 1))
  epochs = workdir / "epochs.jsonl"
  assert [r["epoch"] for r in (jsonl(epochs) if epochs.exists() else [])] == list(
      range(1, step // STEPS_PER_EPOCH + 1))
  result = run(train_args(workdir, cache_dir, "--resume"), env)
  assert result.returncode == 0, result.stderr
  assert resumed_from(result.stderr) == step
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_a_second_ctrl_c_before_the_save_interrupts_at_once_then_resume_is_bitwise_equal(
    reference, env, cache_dir, tmp_path):
  workdir = tmp_path / "run"
  # The first SIGINT asks for a checkpoint at step 5 and gives SIGINT back to Python's handler;
  # the second, before that save, raises KeyboardInterrupt at once, which Python ends the
  # process with by SIGINT (exit status 130 in a shell).
  result = run(train_args(workdir, cache_dir), with_signals(env, "SIGINT@5,SIGINT@5"))
  assert result.returncode == -signal.SIGINT, result.stderr
  assert result.stderr.rstrip().endswith("KeyboardInterrupt")
  assert "SIGINT received" in result.stderr and "saved a checkpoint" not in result.stderr
  # Nothing was saved for it: the checkpoint and the rows before it are kept as they were.
  assert checkpoint_steps(workdir) == [3]
  assert [r["step"] for r in jsonl(workdir / "steps.jsonl")] == [1, 2, 3]
  run_json = json.loads((workdir / "run.json").read_text())
  assert run_json["end"] is None and "stopped" not in run_json
  result = run(train_args(workdir, cache_dir, "--resume"), env)
  assert result.returncode == 0, result.stderr
  assert resumed_from(result.stderr) == 3
  assert_same_run(workdir, reference)


def _damage(checkpoint_dir: pathlib.Path) -> None:
  """Truncates the largest file of a checkpoint's arrays to half its size."""
  files = [p for p in (checkpoint_dir / "state").rglob("*") if p.is_file()]
  biggest = max(files, key=lambda p: p.stat().st_size)
  data = biggest.read_bytes()
  biggest.write_bytes(data[:len(data) // 2])


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_with_a_warning(reference, env, cache_dir,
                                                             tmp_path):
  workdir = copy_run(reference, tmp_path)
  _damage(workdir / "checkpoints" / "16")
  # Harmless changes are allowed on resume: checkpoint cadence and how many to keep.
  result = run(train_args(workdir, cache_dir, "--resume", "--keep-checkpoints", "4"), env)
  assert result.returncode == 0, result.stderr
  assert "skipping damaged checkpoint 16" in result.stderr
  assert resumed_from(result.stderr) == 15
  # The rows written after checkpoint 15 (step 16, epoch 2) were dropped, then written again.
  assert "dropped the later 1 rows of steps.jsonl, 1 rows of epochs.jsonl" in result.stderr
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_resnet_resumes_its_batch_stats_bitwise_mid_epoch(env, cache_dir, tmp_path):
  """A model with BatchNorm state, on one device.

  On 2 CPU devices sharing 2 busy cores, ResNet's cross-device all-reduce stalled in XLA:CPU in 3
  of 6 runs (under pmap and shard_map alike: one device's all-reduce ran as the continuation of a
  convolution on one of the 2 pool threads and its partner never started), aborting the run after
  40 s or hanging it. The LSTM runs above cover 2 devices.
  """
  def args(workdir, *extra):
    # argparse keeps the last --task and --num-devices.
    return train_args(workdir, cache_dir, "--task", "fashion_mnist", "--num-devices", "1",
                      *extra)
  reference = tmp_path / "reference"
  result = run(args(reference), env)
  assert result.returncode == 0, result.stderr
  workdir = copy_run(reference, tmp_path)
  _damage(workdir / "checkpoints" / "16")
  result = run(args(workdir, "--resume"), env)
  assert result.returncode == 0, result.stderr
  assert resumed_from(result.stderr) == 15  # step 7 of 8 in epoch 2, mid-window
  _, state, _ = last_checkpoint(workdir)
  assert jax.tree.leaves(state["train"]["batch_stats"])  # BatchNorm state is compared too
  assert_same_run(workdir, reference)


def _config(workdir, cache_dir, data_dir, **changes):
  base = dict(task="rt_sentiment", workdir=str(workdir), strategy="gradvar", model_size="tiny",
              epochs=EPOCHS, batch_size=8, num_devices=2, train_examples=64, eval_examples=16,
              log_every=1, quiet=True, cache_dir=str(cache_dir), data_dir=str(data_dir),
              checkpoint_every_steps=EVERY)
  return config_lib.Config(**{**base, **changes})


@pytest.mark.slow
def test_no_usable_checkpoint_refuses_unless_allow_fresh(reference, env, cache_dir, data_dir,
                                                         tmp_path):
  workdir = copy_run(reference, tmp_path)
  for step in (12, 15, 16):
    _damage(workdir / "checkpoints" / str(step))
  records = (workdir / "epochs.jsonl").read_text()
  with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
    with pytest.raises(checkpoint.NoCheckpointError,
                       match=r"no usable checkpoint.*checkpoint 16.*checkpoint 15.*checkpoint 12"
                             r".*allow-fresh"):
      loop.train(_config(workdir, cache_dir, data_dir), resume=True)
  assert (workdir / "epochs.jsonl").read_text() == records  # nothing touched
  # allow-fresh warns, removes the old records and checkpoints, and trains from the start.
  result = run(train_args(workdir, cache_dir, "--resume=allow-fresh"), env)
  assert result.returncode == 0, result.stderr
  assert "skipping damaged checkpoint 16" in result.stderr and "starting" in result.stderr
  assert "resuming" not in result.stderr
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_resume_refuses_a_config_that_changes_the_trajectory(reference, cache_dir, data_dir,
                                                             tmp_path):
  workdir = copy_run(reference, tmp_path)
  config = _config(workdir, cache_dir, data_dir, lr=3e-3, seed=1,
                   model={"hidden_size": 16})
  with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.003.*model: \{\} -> \{'hidden_size': 16\}"
                                       r".*seed: 0 -> 1"):
    loop.train(config, resume=True)
  config = _config(workdir, cache_dir, data_dir, strategy="fixed")
  with pytest.raises(ValueError, match="strategy: 'gradvar' -> 'fixed'"):
    loop.train(config, resume="latest")


def test_changed_fields_are_named_and_harmless_ones_allowed():
  saved = _config("/a", "/c", "/d").to_json()
  current = _config("/b", "/c2", "/d2", quiet=False, log_every=5, checkpoint_every_steps=None,
                    keep_checkpoints=1, eval_batch_size=64, skip_nonfinite=True).to_json()
  assert checkpoint.mismatched_fields(saved, current) == []
  current = _config("/a", "/c", "/d", batch_size=16, epochs=3, data={"max_len": 32},
                    strategy="gradvar-window20", parallel="shard_map", num_devices=1).to_json()
  assert checkpoint.mismatched_fields(saved, current) == [
      "batch_size", "data", "epochs", "num_devices", "parallel", "strategy"]


def test_a_workdir_with_a_run_is_refused_without_resume(tmp_path, data_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "steps.jsonl").write_text('{"step": 1}\n')
  with pytest.raises(ValueError, match=f"config.workdir: {workdir} already holds a run"):
    loop.train(_config(workdir, tmp_path / "cache", data_dir))
  with pytest.raises(ValueError, match="resume: must be"):
    loop.train(_config(workdir, tmp_path / "cache", data_dir), resume="newest")


def test_resume_without_any_checkpoint_refuses(tmp_path, data_dir):
  config = _config(tmp_path / "run", tmp_path / "cache", data_dir, train_examples=16,
                   eval_examples=8)
  with pytest.raises(checkpoint.NoCheckpointError, match="no usable checkpoint.*allow-fresh"):
    loop.train(config, resume=True)


def test_truncate_records_keeps_rows_up_to_the_checkpoint_and_drops_a_cut_row(tmp_path):
  (tmp_path / "steps.jsonl").write_text(
      "".join(json.dumps({"step": s, "epoch": 1 + (s > 4)}) + "\n" for s in range(1, 8))
      + '{"step": 8, "ep')  # cut short by a kill
  (tmp_path / "epochs.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
  removed = checkpoint.truncate_records(tmp_path, step=5, epochs_done=1)
  assert removed == {"steps.jsonl": 3, "epochs.jsonl": 1}
  assert [r["step"] for r in jsonl(tmp_path / "steps.jsonl")] == [1, 2, 3, 4, 5]
  assert jsonl(tmp_path / "epochs.jsonl") == [{"epoch": 1}]


def test_checkpoint_round_trips_optimizer_namedtuples_and_rejects_bad_checksums(tmp_path):
  import optax

  import gradvar_optax
  from train import step as step_lib
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  opt = optax.apply_if_finite(gradvar_optax.gradvar(optax.adam(1e-3)), 3)
  state = step_lib.TrainState(np.int32(7), params, {}, jax.device_get(opt.init(params)))
  tree = {"train": state, "rng": np.array([1, 2], np.uint32)}
  abstract = jax.eval_shape(lambda: tree)
  ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", keep=2)
  config = {"task": "t"}
  assert ckpts.save(7, tree, {"config": config})
  assert not ckpts.save(7, tree, {"config": config})  # one save per step
  restored, skipped = ckpts.restore_latest(lambda saved: abstract, config)
  assert skipped == [] and restored.step == 7
  assert type(restored.state["train"].opt_state) is optax.ApplyIfFiniteState
  assert type(restored.state["train"].opt_state.inner_state) is gradvar_optax.GradVarState
  jax.tree.map(np.testing.assert_array_equal, restored.state, tree)
  # Arrays that read back but differ from what was saved are caught by the checksums.
  changed = {"train": state._replace(step=np.int32(8)), "rng": tree["rng"]}
  ckpts.save(9, changed, {"config": config})
  meta_file = next((ckpts.directory / "9" / "meta").rglob("metadata"))
  meta = json.loads(meta_file.read_text())
  meta["digest"][0] += 1
  meta_file.write_text(json.dumps(meta))
  with pytest.warns(UserWarning, match="checkpoint 9 .*checksums"):
    restored, skipped = ckpts.restore_latest(lambda saved: abstract, config)
  assert restored.step == 7 and len(skipped) == 1
  assert ckpts.steps() == [7]  # the damaged newer one is gone, so step 9 can be saved again
  ckpts.close()


def test_cli_flags_set_the_checkpoint_and_fault_fields(tmp_path):
  from train import __main__ as cli
  base = ["--task", "rt_sentiment", "--workdir", str(tmp_path / "w")]
  config = cli.config_from_args(base)
  assert (config.checkpoint_every_steps, config.keep_checkpoints, config.skip_nonfinite) == (
      None, 3, False)
  config = cli.config_from_args(base + ["--checkpoint-every", "50", "--keep-checkpoints", "5",
                                        "--skip-nonfinite"])
  assert (config.checkpoint_every_steps, config.keep_checkpoints, config.skip_nonfinite) == (
      50, 5, True)
  config = cli.config_from_args(base + ["--set", "checkpoint_every_steps=7",
                                        "--set", "skip_nonfinite=true"])
  assert config.checkpoint_every_steps == 7 and config.skip_nonfinite
  assert cli.parser().parse_args(base + ["--resume"]).resume == "latest"
  assert cli.parser().parse_args(base + ["--resume=allow-fresh"]).resume == "allow-fresh"
  assert cli.parser().parse_args(base).resume is None
  with pytest.raises(ValueError, match="keep_checkpoints"):
    cli.config_from_args(base + ["--keep-checkpoints", "0"])
  with pytest.raises(ValueError, match="checkpoint_every_steps"):
    cli.config_from_args(base + ["--checkpoint-every", "-2"])


@pytest.mark.slow
def test_evaluations_every_k_steps_and_what_the_strategy_saw_resume_bitwise(
    cache_dir, data_dir, tmp_path, monkeypatch, caplog):
  """In process, with a strategy that counts the evaluations it is shown in its state
  (`observe_eval`): evals.jsonl and that state continue exactly across a resume."""
  fake_strategies.register(monkeypatch)

  def config(workdir):
    return _config(workdir, cache_dir, data_dir, strategy="count-evals", eval_every_steps=4)

  reference = tmp_path / "reference"
  loop.train(config(reference))
  evals = records.read_evals(reference / "evals.jsonl")
  assert [r.step for r in evals] == [4, 8, 12, 16]
  _, state, _ = last_checkpoint(reference)
  assert fake_strategies.eval_count(state["train"]["opt_state"]) == (4, np.float32(
      evals[-1].val_loss))
  # SIGTERM at step 4, mid-epoch and between checkpoints: the step is evaluated, observed, then
  # saved; the resumed run neither evaluates it again nor misses it.
  workdir = tmp_path / "run"
  monkeypatch.setenv("GRADVAR_TEST_SIGNALS", "SIGTERM@4")
  with pytest.raises(checkpoint.Preempted, match="at step 4 "):
    loop.train(config(workdir))
  monkeypatch.delenv("GRADVAR_TEST_SIGNALS")
  assert checkpoint_steps(workdir) == [3, 4]
  assert [r.step for r in records.read_evals(workdir / "evals.jsonl")] == [4]
  _, state, _ = last_checkpoint(workdir)
  assert fake_strategies.eval_count(state["train"]["opt_state"])[0] == 1
  loop.train(config(workdir), resume=True)
  assert_same_run(workdir, reference)
  assert_same_evals(workdir, reference)
  # Checkpoints 15 and 16 damaged: the run resumes from 12, keeps the evaluation of step 12
  # (made before that checkpoint) and drops the one of step 16, which it then makes again.
  workdir = copy_run(reference, tmp_path / "damaged")
  for step in (15, 16):
    _damage(workdir / "checkpoints" / str(step))
  with caplog.at_level(logging.WARNING), pytest.warns(UserWarning, match="skipping damaged"):
    loop.train(config(workdir), resume=True)
  assert "resuming" in caplog.text and "from step 12" in caplog.text
  assert "4 rows of steps.jsonl, 1 rows of evals.jsonl, 1 rows of epochs.jsonl" in caplog.text
  assert_same_run(workdir, reference)
  assert_same_evals(workdir, reference)


def test_a_checkpoint_of_the_old_layout_is_converted_once_on_restore(tmp_path):
  """Before the optimizer was always inside `apply_if_finite`, a run without skip_nonfinite
  saved the strategy's state alone; such a checkpoint restores into today's layout."""
  import optax

  import gradvar_optax
  from train import resume
  from train import step as step_lib
  params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  inner = gradvar_optax.gradvar(optax.adam(1e-3))
  wrapped = optax.apply_if_finite(inner, 0)
  today = step_lib.TrainState(np.int32(7), params, {}, jax.device_get(wrapped.init(params)))
  old = today._replace(opt_state=jax.device_get(inner.init(params)))
  abstract_for = resume._abstract_for(jax.eval_shape(lambda: today))
  ckpts = checkpoint.Checkpoints(tmp_path / "ckpt", keep=3)
  layout = dict([resume.OPT_LAYOUT])
  saves = {5: (old, {"skip_nonfinite": False}, {}),  # the old layout
           6: (today, {"skip_nonfinite": True}, {}),  # skipping: wrapped then too
           7: (today, {"skip_nonfinite": False}, layout)}  # today's
  for step, (state, config, extra) in saves.items():
    ckpts.save(step, {"train": state, "rng": np.array([1, 2], np.uint32)},
               {"config": config, **extra})
  for step, (_, config, extra) in saves.items():
    meta = {"config": config, **extra}
    restored = ckpts._read_state(step, ckpts._read_meta(step), abstract_for(meta))
    state = resume._converted(restored["train"], meta)
    assert type(state.opt_state) is optax.ApplyIfFiniteState, step
    assert type(state.opt_state.inner_state) is gradvar_optax.GradVarState, step
    jax.tree.map(np.testing.assert_array_equal, state, today)
  ckpts.close()

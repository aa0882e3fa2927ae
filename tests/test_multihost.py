"""Multi-host training with real `jax.distributed` processes on 127.0.0.1.

Two processes with two CPU devices each must train exactly what one process with four devices
trains on the same global batches (float tolerance, identical gradvar decisions), under both
launchers; a run that loses a process must fail within a bounded time instead of hanging; and a
preempted two-process run must save on both and resume exactly.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import stacks

from train import __main__ as cli
from train import distributed
from train import step as step_lib
from train import watchdog

REPO = pathlib.Path(__file__).resolve().parents[1]
# 96 examples in batches of 8: 12 steps an epoch, so gradvar (window 5, every 5 steps) decides at
# steps 10, 15 and 20 of the 24.
RUN = ["--task", "rt_sentiment", "--strategy", "gradvar", "--model-size", "tiny", "--epochs", "2",
       "--batch-size", "8", "--quiet", "--set", "train_examples=96", "--set", "eval_examples=20",
       "--set", "log_every=1"]
# A lost peer is declared dead after this many seconds without heartbeats.
HEARTBEAT_S = 5
# Generous: two processes share two busy cores with the rest of the suite.
RUN_TIMEOUT_S = 420
# The watchdog's bound (--collective-timeout): a run whose steps make no progress for this long
# ends with an error naming the step and where it waits, well before RUN_TIMEOUT_S. Above the
# longest step, evaluation (its first call compiles) and save on busy cores.
COLLECTIVE_TIMEOUT_S = 180
# How long process 0 may go on after its peer was killed before the test calls it a hang.
LOST_PEER_GUARD_S = 300
# pytest-timeout's bound for the tests that start runs: above their own waits (the first test of
# a launcher also makes the module's reference and two-process runs), so that those report first.
TEST_TIMEOUT_S = 4 * RUN_TIMEOUT_S + 300


def _reserve_port() -> socket.socket:
  """A socket bound to a free port, which it holds for the coordinator until closed.

  Binding, closing and passing the number on would leave a window in which another program
  could take the port. With SO_REUSEPORT set, the coordinator's gRPC server (which sets it too)
  binds the port while this socket holds it; a program that does not set it cannot.
  """
  s = socket.socket()
  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(("127.0.0.1", 0))
  return s


class _Run(list):
  """Process 0 and 1 of a run (`Popen`s), the socket that holds their coordinator's port, and
  the folder of their logs."""

  def __init__(self, procs, port_holder: socket.socket, logs: pathlib.Path):
    super().__init__(procs)
    self.port_holder = port_holder
    self.logs = logs

  def stalled(self, problem: str) -> None:
    """Dumps every thread's stack of both processes (kept under the logs), stops them, fails."""
    where = stacks.dump_stacks(self, self.logs / "stacks")
    self.stop()
    pytest.fail(f"{problem}\n{where}\n{stacks.summarize(self.logs / 'stacks')}\n"
                f"{_logs(self.logs)}")

  def stop(self) -> None:
    """Kills what still runs and releases the port."""
    for p in self:
      if p.poll() is None:
        p.kill()
        p.wait()
    self.port_holder.close()


def _jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def _final_params(workdir):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(pathlib.Path(workdir, "final").absolute())


def _env(data_dir, jax_cache) -> dict:
  env = dict(os.environ)
  env.update({
      # Two devices per process; single-threaded Eigen kernels and a long in-process collective
      # timeout, as in test_resume: on busy cores XLA:CPU once stalled an all-reduce past its
      # 40 s default. A lost peer is still detected by the heartbeats (HEARTBEAT_S).
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false "
                   "--xla_cpu_collective_call_terminate_timeout_seconds=600",
      "JAX_PLATFORMS": "cpu", "GRADVAR_DATA_DIR": str(data_dir),
      # The processes compile the same programs: the second one reads the first one's.
      "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "PYTHONUNBUFFERED": "1"})
  return stacks.child_env(env)


def _launch(argv, workdir, env, logs: pathlib.Path, extra=((), ()), native_dumps=True) -> _Run:
  """Starts process 0 and 1 of a run (stdout/stderr to files: pipes could fill and block);
  `extra[i]`: more flags for process i. With `native_dumps`, a process that the watchdog ends
  dumps its native stacks under the logs first (which pauses it: see train/watchdog.py)."""
  holder = _reserve_port()
  port = holder.getsockname()[1]
  logs.mkdir(parents=True, exist_ok=True)
  if native_dumps:
    env = {**env, watchdog.DUMP_DIR_ENV: str(logs / "stacks")}
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "train", *argv, "--workdir", str(workdir), "--distributed",
           "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
           "--heartbeat-timeout", str(HEARTBEAT_S), "--init-timeout", "120",
           "--collective-timeout", str(COLLECTIVE_TIMEOUT_S), *extra[i]]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(logs / f"{i}.out", "w"),
                                  stderr=open(logs / f"{i}.err", "w")))
  return _Run(procs, holder, logs)


def _logs(logs: pathlib.Path) -> str:
  return "\n".join(f"--- process {i} stderr:\n{(logs / f'{i}.err').read_text()[-3000:]}"
                   for i in range(2))


def _finish(procs: _Run, logs: pathlib.Path, codes=(0, 0)) -> list[str]:
  """Waits for both processes (killing both on timeout) and checks their exit codes; stdouts."""
  deadline = time.monotonic() + RUN_TIMEOUT_S
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    procs.stalled(f"the 2-process run did not finish in {RUN_TIMEOUT_S} s")
  finally:
    procs.stop()
  got = tuple(p.returncode for p in procs)
  assert got == tuple(codes), f"exit codes {got}\n{_logs(logs)}"
  return [(logs / f"{i}.out").read_text() for i in range(2)]


def _wait_for(condition, procs: _Run, logs: pathlib.Path, what: str) -> None:
  """Polls `condition` while both processes run; on failure both are killed."""
  deadline = time.monotonic() + RUN_TIMEOUT_S
  while not condition():
    problem = ("a process exited early" if any(p.poll() is not None for p in procs) else
               f"no {what} in {RUN_TIMEOUT_S} s" if time.monotonic() > deadline else None)
    if problem:
      procs.stalled(problem)
    time.sleep(0.2)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, data_dir):
  """A folder for the module's runs, whose token and compilation caches they all share."""
  root = tmp_path_factory.mktemp("multihost")
  return dict(root=root, env=_env(data_dir, root / "jax_cache"),
              base=[*RUN, "--set", f"cache_dir={root / 'cache'}", "--data-dir", str(data_dir)])


@pytest.fixture(scope="module")
def runs(shared):
  """`runs(parallel)`: the 2x2 run of RUN under `parallel` and the 1x4 reference, made once."""
  root, made = shared["root"], {}

  def get(parallel):
    if "one" not in made:
      # One reference serves both launchers: in one process they agree bitwise (test_train).
      # It runs first and fills the token cache that the two processes then read.
      made["one"] = root / "one"
      assert cli.main([*shared["base"], "--workdir", str(made["one"]), "--num-devices", "4"]) == 0
    if parallel not in made:
      base = [*shared["base"], "--parallel", parallel]
      two, logs = root / f"two_{parallel}", root / f"logs_{parallel}"
      made[parallel] = dict(base=base, one=made["one"], two=two,
                            stdouts=_finish(_launch(base, two, shared["env"], logs), logs))
    return made[parallel]

  return get


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(TEST_TIMEOUT_S)
@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_two_processes_train_like_one_process(runs, parallel):
  r = runs(parallel)
  one_steps, two_steps = _jsonl(r["one"] / "steps.jsonl"), _jsonl(r["two"] / "steps.jsonl")
  # Only process 0 writes: one row per step, no duplicates from the other process.
  assert [s["step"] for s in two_steps] == list(range(1, 25))
  assert [e["epoch"] for e in _jsonl(r["two"] / "epochs.jsonl")] == [1, 2]
  assert len(list((r["two"] / "tb").glob("events.out.tfevents.*"))) == 1
  # The same gradvar decisions, step by step, and at least one decision was taken.
  scales = [s["readouts"]["lr_scale"] for s in two_steps]
  assert scales == [s["readouts"]["lr_scale"] for s in one_steps]
  assert len(set(scales)) > 1
  np.testing.assert_allclose([s["loss"] for s in two_steps], [s["loss"] for s in one_steps],
                             rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               _final_params(r["two"]), _final_params(r["one"]))
  # Evaluation is a global reduction: both processes report the same figures, those of 1x4.
  results = [json.loads(out.strip().splitlines()[-1]) for out in r["stdouts"]]
  assert results[0] == results[1]
  one_epochs, two_epochs = _jsonl(r["one"] / "epochs.jsonl"), _jsonl(r["two"] / "epochs.jsonl")
  np.testing.assert_allclose([e["val_loss"] for e in two_epochs],
                             [e["val_loss"] for e in one_epochs], rtol=1e-5)
  run = json.loads((r["two"] / "run.json").read_text())
  assert run["hardware"]["process_count"] == 2 and run["hardware"]["device_count"] == 4


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_sigterm_to_one_process_checkpoints_both_and_resume_continues_exactly(runs, shared,
                                                                             tmp_path):
  r = runs("shard_map")
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  procs = _launch(r["base"], workdir, shared["env"], logs)
  # Once joined, a SIGTERM is a preemption notice that JAX passes to every process; they agree
  # on a step, save there together and exit (75: EX_TEMPFAIL, resumable).
  _wait_for(lambda: "distributed: process 1 of 2" in (logs / "1.err").read_text(), procs, logs,
            "join")
  procs[1].send_signal(signal.SIGTERM)
  # Each process exits 75 only after its part of the save returned (the CLI's contract).
  _finish(procs, logs, codes=(75, 75))
  # The save is collective: had the two processes stopped at different steps, there would be two
  # stop checkpoints (or a failed save). There is one, complete, where the records end; the other
  # step folders are the epoch ends' (12 steps an epoch).
  folders = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert all(name.isdigit() for name in folders), folders  # no unfinished save
  saved = [int(name) for name in folders]
  stop = _jsonl(workdir / "steps.jsonl")[-1]["step"]
  assert 0 < stop < 24 and max(saved) == stop  # stopped before the end, saved where it stopped
  assert set(saved) <= {12, stop}, saved
  assert not (workdir / "final").exists()

  resumed = tmp_path / "logs_resumed"
  _finish(_launch([*r["base"], "--resume"], workdir, shared["env"], resumed), resumed)
  # Exactly the uninterrupted two-process run: params, gradvar decisions, records.
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), _final_params(r["two"]))
  steps, full = _jsonl(workdir / "steps.jsonl"), _jsonl(r["two"] / "steps.jsonl")
  assert [s["step"] for s in steps] == list(range(1, 25))
  assert [s["readouts"] for s in steps] == [s["readouts"] for s in full]
  assert [e["epoch"] for e in _jsonl(workdir / "epochs.jsonl")] == [1, 2]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_lost_process_stops_the_other_within_a_bounded_time(shared, tmp_path):
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  argv = [*shared["base"], "--parallel", "pmap"]
  argv[argv.index("--epochs") + 1] = "1000"  # far longer than the test waits
  procs = _launch(argv, workdir, shared["env"], logs)
  try:
    steps = workdir / "steps.jsonl"
    # Both processes are training once process 0 has logged steps (each step is collective).
    _wait_for(lambda: steps.exists() and len(steps.read_text().splitlines()) >= 3, procs, logs,
              "steps")
    procs[1].send_signal(signal.SIGKILL)
    # A hang guard only: detection takes about one heartbeat timeout (or less, when a collective
    # fails first), which benchmarks/perf/multihost_latency.py measures.
    try:
      procs[0].wait(timeout=LOST_PEER_GUARD_S)
    except subprocess.TimeoutExpired:
      procs.stalled(f"process 0 still runs {LOST_PEER_GUARD_S} s after its peer died")
  finally:
    procs.stop()
  assert procs[0].returncode != 0, _logs(logs)
  assert not (workdir / "run.json").exists() or json.loads(
      (workdir / "run.json").read_text())["end"] is None


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_collective_stuck_among_live_processes_ends_with_the_watchdogs_error(shared, tmp_path):
  # Process 1 blocks after step 3 (GRADVAR_TEST_STALL), alive: its heartbeats go on, so only the
  # watchdog can tell. Process 0 then waits in the step-4 all-reduce that process 1 never joins.
  # Process 1's own watchdog is set later, so that process 0's is the one seen to fire. 60 s:
  # above the first calls' compiles on busy cores (a 10 s bound fired in the first `_accumulate`).
  workdir, logs = tmp_path / "run", tmp_path / "logs"
  env = {**shared["env"], "GRADVAR_TEST_STALL": "1@3"}
  argv = [*shared["base"], "--parallel", "shard_map"]
  procs = _launch(argv, workdir, env, logs, native_dumps=False,
                  extra=(["--collective-timeout", "60"], ["--collective-timeout", "240"]))
  start = time.monotonic()
  try:
    procs[0].wait(timeout=RUN_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    procs.stalled(f"process 0 still runs {RUN_TIMEOUT_S} s after its peer stalled")
  try:  # Process 1 ends too: its peer's heartbeats stop, or its own watchdog fires.
    procs[1].wait(timeout=HEARTBEAT_S + 120)
  except subprocess.TimeoutExpired:
    procs.stalled("process 1 still runs after process 0 ended")
  finally:
    procs.stop()
  err = (logs / "0.err").read_text()
  assert procs[0].returncode == watchdog.EXIT_CODE, _logs(logs)
  assert procs[1].returncode != 0, _logs(logs)
  # The step, the bound and the operation: where process 0's main thread waits, in the loop.
  # Steps are dispatched ahead of the host, up to its next sync (at the latest, the epoch's last
  # step, 12): the step named is the last one dispatched, after the stuck step 4.
  found = re.search(r"error: collective timeout: process 0 made no progress for 60 s since it "
                    r"dispatched step (\d+)", err)
  assert found, err[-3000:]
  assert 4 <= int(found.group(1)) <= 12
  assert "its main thread waits in train/" in err
  assert time.monotonic() - start < RUN_TIMEOUT_S


# --- Flags and the launcher's host copies, in this process ------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "10.0.0.1:1234"], "--coordinator needs --distributed"),
    (["--distributed", "--coordinator", "10.0.0.1"], "--coordinator: expected HOST:PORT"),
    (["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id"),
    (["--distributed", "--heartbeat-timeout", "0"], "--heartbeat-timeout"),
])
def test_bad_distributed_flags_fail_before_joining(flags, message, tmp_path, capsys):
  argv = ["--task", "rt_sentiment", "--workdir", str(tmp_path / "w"), *flags]
  assert cli.main(argv) == 2
  assert message in capsys.readouterr().err
  assert not jax.distributed.is_initialized()


def test_distributed_without_a_cluster_says_what_to_pass(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "TPU_", "MEGASCALE"))}
  out = subprocess.run(
      [sys.executable, "-m", "train", "--task", "rt_sentiment", "--workdir",
       str(tmp_path / "w"), "--distributed", "--init-timeout", "20"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr
  assert "--coordinator HOST:PORT, --num-processes N and --process-id I" in out.stderr


def test_options_from_flags():
  args = cli.parser().parse_args(["--task", "t", "--workdir", "w", "--distributed",
                                  "--heartbeat-timeout", "7"])
  assert distributed.options_from_args(args) == distributed.Options(heartbeat_timeout_s=7)
  args = cli.parser().parse_args(["--task", "t", "--workdir", "w"])
  assert distributed.options_from_args(args) is None


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_put_state_then_get_round_trips_a_host_state(parallel):
  launcher = step_lib.Launcher(parallel, jax.local_devices()[:4])
  host = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "count": np.int32(7),
          "key": jax.random.key(3)}
  placed = launcher.put_state(host)
  for name in ("w", "count"):
    shards = placed[name].addressable_shards
    assert {s.device for s in shards} == set(launcher.devices)
    for s in shards:  # every device holds the whole value (pmap: as its row of the device axis)
      data = np.asarray(s.data)
      np.testing.assert_array_equal(data[0] if parallel == "pmap" else data, host[name])
  back = launcher.get({"w": placed["w"], "count": placed["count"]})
  np.testing.assert_array_equal(back["w"], host["w"])
  assert back["count"] == 7 and isinstance(back["w"], np.ndarray)
  keys = placed["key"] if parallel == "shard_map" else placed["key"][0]
  np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(host["key"]))

"""How long a two-process run takes to stop once one of its processes dies.

Each repeat starts a two-process `python -m train --distributed` run on 127.0.0.1 (two CPU
devices per process, the set-up of tests/test_multihost.py), waits until process 0 has logged a
few steps (so both processes are training: each step is collective), SIGKILLs process 1 and
times how long process 0 takes to exit. The peer is declared dead after `--heartbeat-timeout`
seconds without heartbeats, or sooner when a collective fails first. The test keeps only a hang
guard; this is where the latency is measured.

  python -m benchmarks.perf.multihost_latency --data-dir "$GRADVAR_DATA_DIR"
  python -m benchmarks.perf.multihost_latency --repeats 5 --out lat.json
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import jax

from benchmarks import runs as runs_lib
from train import records

REPO = pathlib.Path(__file__).resolve().parents[1]
# Two CPU devices per process, single-threaded Eigen kernels and a long in-process collective
# timeout, as in tests/test_multihost.py (on busy cores XLA:CPU once stalled an all-reduce).
XLA_FLAGS = ("--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600")


def _reserve_port() -> socket.socket:
  """A socket that holds a free port; SO_REUSEPORT lets the coordinator bind it meanwhile."""
  s = socket.socket()
  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
  s.bind(("127.0.0.1", 0))
  return s


def one_repeat(args, workdir: pathlib.Path, env: dict) -> dict:
  """Starts a run, kills process 1 once training, and times process 0's exit."""
  holder = _reserve_port()
  port = holder.getsockname()[1]
  logs = workdir / "logs"
  logs.mkdir(parents=True)
  procs = []
  try:
    for i in range(2):
      cmd = [sys.executable, "-m", "train", "--task", args.task, "--strategy", "gradvar",
             "--model-size", "tiny", "--epochs", "1000", "--batch-size", "8", "--quiet",
             "--set", "train_examples=96", "--set", "eval_examples=20", "--set", "log_every=1",
             "--set", f"cache_dir={workdir.parent / 'cache'}", "--workdir", str(workdir / "run"),
             "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
             "--process-id", str(i), "--heartbeat-timeout", str(args.heartbeat_timeout),
             "--init-timeout", "120"]
      if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                    stderr=open(logs / f"{i}.err", "w")))
    steps = workdir / "run" / runs_lib.STEPS
    deadline = time.monotonic() + args.start_timeout
    while not (steps.exists() and len(steps.read_text().splitlines()) >= 3):
      if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
        raise RuntimeError("the run did not start training:\n"
                           + (logs / "0.err").read_text()[-3000:])
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    try:
      procs[0].wait(timeout=args.stop_timeout)
      waited = time.monotonic() - killed
    except subprocess.TimeoutExpired:
      waited = None
    return {"seconds": waited, "exit_code": procs[0].returncode}
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    holder.close()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="rt_sentiment")
  parser.add_argument("--data-dir", default=os.environ.get("GRADVAR_DATA_DIR"))
  parser.add_argument("--heartbeat-timeout", type=int, default=5,
                      help="seconds without heartbeats after which a peer is dead (the test's 5)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--start-timeout", type=float, default=600,
                      help="seconds to wait for the run to start training")
  parser.add_argument("--stop-timeout", type=float, default=300,
                      help="seconds to wait for process 0 after the kill (then: no figure)")
  parser.add_argument("--out", help="write the results as JSON here")
  args = parser.parse_args(argv)

  command = ("python -m benchmarks.perf.multihost_latency "
             + " ".join(argv if argv is not None else sys.argv[1:]))
  hw = records.hardware(jax.local_devices())
  print(f"command: {command}")
  print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()))
  print(f"processes: 2 x 2 CPU devices, XLA_FLAGS={XLA_FLAGS}")
  workroot = pathlib.Path(tempfile.mkdtemp(prefix="multihost-latency-"))
  env = {**os.environ, "XLA_FLAGS": XLA_FLAGS, "JAX_PLATFORMS": "cpu",
         "JAX_COMPILATION_CACHE_DIR": str(workroot / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONUNBUFFERED": "1"}
  rows = []
  try:
    for r in range(args.repeats):
      row = one_repeat(args, workroot / f"repeat{r}", env)
      rows.append(row)
      shown = (f"did not stop within {args.stop_timeout:.0f} s" if row["seconds"] is None else
               f"stopped after {row['seconds']:.1f} s (exit {row['exit_code']})")
      print(f"  repeat {r + 1}/{args.repeats}: process 0 {shown}", file=sys.stderr)
  finally:
    shutil.rmtree(workroot, ignore_errors=True)
  times = [row["seconds"] for row in rows if row["seconds"] is not None]
  result = {"command": command, "hardware": hw, "xla_flags": XLA_FLAGS,
            "heartbeat_timeout_s": args.heartbeat_timeout, "repeats": rows,
            "median_s": statistics.median(times) if times else None,
            "max_s": max(times) if times else None}
  shown = ", ".join("-" if r["seconds"] is None else f"{r['seconds']:.1f}" for r in rows)
  summary = (f"median {result['median_s']:.1f} s, max {result['max_s']:.1f} s" if times else
             "no repeat stopped")
  print(f"\nheartbeat timeout {args.heartbeat_timeout} s: process 0 stopped after {shown} s "
        f"({summary}; '-': not within --stop-timeout)")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()

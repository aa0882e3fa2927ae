"""Multi-host training: joining the processes of one run before anything touches a device.

Every process of a multi-host run executes the same program (JAX's multi-controller model). They
find each other through a coordinator (process 0), after which `jax.devices()` lists the devices of
every process and collectives span all of them. `initialize` must run before JAX creates its
backends, i.e. before the first `jax.devices()`, `device_put` or computation; the CLI calls it
first thing.

On TPU pods, SLURM and Open MPI the processes' ranks and the coordinator come from the
environment; elsewhere pass all three of `coordinator`, `num_processes` and `process_id`.

A process that dies is noticed by the others through missed heartbeats (or at once by a failing
collective): the survivors then stop with an error instead of waiting forever. That takes up to
`heartbeat_timeout_s`, so a short timeout fails fast, at the price of flagging as dead a process
that is stalled (not busy: heartbeats come from a thread of their own) for that long.
"""

import argparse
import dataclasses
import sys
from typing import Optional

# JAX's own defaults: generous for pods, where processes start minutes apart.
INIT_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 100


@dataclasses.dataclass(frozen=True)
class Options:
  """How this process joins a multi-host run (all None: detect from the cluster environment)."""

  coordinator: Optional[str] = None  # "host:port" of process 0
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  init_timeout_s: int = INIT_TIMEOUT_S
  heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S

  def __post_init__(self):
    if self.coordinator is not None:
      host, sep, port = self.coordinator.rpartition(":")
      if not sep or not host or not port.isdigit():
        raise ValueError(f"--coordinator: expected HOST:PORT, got {self.coordinator!r}")
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(f"--num-processes: must be >= 1, got {self.num_processes}")
    if self.process_id is not None and not (
        0 <= self.process_id < (self.num_processes or sys.maxsize)):
      raise ValueError(f"--process-id: must be in [0, --num-processes), got "
                       f"{self.process_id} of {self.num_processes}")
    for flag, value in (("--init-timeout", self.init_timeout_s),
                        ("--heartbeat-timeout", self.heartbeat_timeout_s)):
      if value < 1:
        raise ValueError(f"{flag}: must be at least 1 s, got {value}")


def initialize(options: Options) -> None:
  """Joins this process to the run (`jax.distributed.initialize`); call before any device use.

  Raises:
    ValueError: no cluster environment was detected and the options do not name the processes.
    RuntimeError: JAX's backends were already created, or the coordinator was not reached within
      `init_timeout_s`.
  """
  import jax  # the CLI's --help must not need it

  # CPU collectives across processes go over TCP (gloo); GPUs and TPUs use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        coordinator_address=options.coordinator, num_processes=options.num_processes,
        process_id=options.process_id, initialization_timeout=options.init_timeout_s,
        heartbeat_timeout_seconds=options.heartbeat_timeout_s,
        # At exit every process waits for the others; one whose peer failed must not linger.
        shutdown_timeout_seconds=options.heartbeat_timeout_s)
  except ValueError as e:
    raise ValueError(
        f"--distributed: {e} No TPU pod, SLURM or Open MPI environment was detected; pass "
        "--coordinator HOST:PORT, --num-processes N and --process-id I.") from None
  print(f"distributed: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local of {jax.device_count()} devices", file=sys.stderr,
        flush=True)


def add_flags(parser: argparse.ArgumentParser) -> None:
  """The CLI's multi-host flags."""
  g = parser.add_argument_group(
      "multi-host", "Run the same command on every host (process). On TPU pods, SLURM and "
      "Open MPI, --distributed alone finds the others; elsewhere give all three of "
      "--coordinator, --num-processes and --process-id.")
  g.add_argument("--distributed", action="store_true",
                 help="join a multi-host run (jax.distributed.initialize)")
  g.add_argument("--coordinator", metavar="HOST:PORT",
                 help="address of process 0, reachable from every process")
  g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
  g.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1")
  g.add_argument("--init-timeout", type=int, default=INIT_TIMEOUT_S, metavar="S",
                 help=f"seconds to wait for all processes to join (default {INIT_TIMEOUT_S})")
  g.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_TIMEOUT_S, metavar="S",
                 help="seconds after which a silent process counts as dead and the others stop "
                      f"with an error (default {HEARTBEAT_TIMEOUT_S})")


def options_from_args(args: argparse.Namespace) -> Optional[Options]:
  """The parsed flags as `Options`, or None for a single-process run."""
  named = [f for f in ("coordinator", "num_processes", "process_id")
           if getattr(args, f) is not None]
  if not args.distributed:
    if named:
      raise ValueError(f"--{named[0].replace('_', '-')} needs --distributed")
    return None
  return Options(coordinator=args.coordinator, num_processes=args.num_processes,
                 process_id=args.process_id, init_timeout_s=args.init_timeout,
                 heartbeat_timeout_s=args.heartbeat_timeout)

"""Runs a test again in a pytest process of its own, with the multi-host tests' XLA:CPU flags.

On 8 host CPU devices sharing 2 busy cores, ResNet's cross-device all-reduce once stalled in
XLA:CPU (tests/test_resume.py tells how): one device's all-reduce ran as the continuation of a
convolution on a pool thread, and its partner never started. The multi-host tests avoid that with
single-threaded Eigen kernels and a long collective timeout (tests/test_multihost.py). Those flags
must be set before jax starts, and the rest of the suite runs without them, hence a process.

Usage, at the top of the test:

    def test_x(request):
      if isolate.rerun(request):
        return  # the child process ran the test below, and it passed
      ...  # the test, run in the child

The test's fixtures other than `request` are made in the child too: ask for the expensive ones
with `request.getfixturevalue` below the `rerun` line.
"""

import os
import subprocess
import sys

import pytest

_CHILD = "GRADVAR_ISOLATED_TEST"
# How much sooner than the parent test's own timeout the child is stopped, so that the parent
# reports the child's output instead of pytest-timeout killing both.
_MARGIN_S = 30


def xla_flags(devices: int) -> str:
  return (f"--xla_force_host_platform_device_count={devices} --xla_cpu_multi_thread_eigen=false "
          "--xla_cpu_collective_call_terminate_timeout_seconds=600")


def _timeout_s(request) -> float:
  marker = request.node.get_closest_marker("timeout")
  if marker is not None:
    return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
  configured = request.config.getini("timeout")
  return float(configured) if configured else 3600.0


def rerun(request, devices: int = 8) -> bool:
  """In the parent: runs this test in a child pytest, fails with its output unless it passed.

  Returns True in the parent (the caller returns), False in the child (the caller runs the test).
  """
  nodeid = request.node.nodeid
  if os.environ.get(_CHILD) == nodeid:
    return False
  env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
  env.update({_CHILD: nodeid, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu"})
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid]
  timeout = max(_timeout_s(request) - _MARGIN_S, 1.0)
  try:
    out = subprocess.run(cmd, cwd=request.config.rootpath, env=env, capture_output=True,
                         text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    pytest.fail(f"{nodeid} did not finish in {timeout:.0f} s in its own process:\n"
                f"{output[-6000:]}", pytrace=False)
  if out.returncode != 0 or "1 passed" not in out.stdout:
    pytest.fail(f"{nodeid} failed in its own process (exit {out.returncode}, XLA_FLAGS="
                f"{env['XLA_FLAGS']!r}):\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}",
                pytrace=False)
  return True

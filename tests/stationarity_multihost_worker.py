"""One process of a reduce_on_stationarity run under shard_map over every device of every process.

tests/test_gradvar_stationarity_compose.py starts it as 1 process with 4 devices and as 2
processes with 2 devices each (real `jax.distributed` on 127.0.0.1, gloo collectives): the same
global batches, the same `reduce_on_stationarity(sgd, axis_name=...)` step with each replica's
un-averaged gradient, so that delta is averaged across the processes. It writes, per step, the
state's statistics and, at the end, the params, as JSON.

  python tests/stationarity_multihost_worker.py OUT.json [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import json
import os
import sys

# Runs as a script from the checkout: the suite (train/) is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = 150
BATCH = 32
DIM = 6


def batch(step):
  """The global batch of `step`: a noisy linear regression, the same in every process."""
  import numpy as np

  rng = np.random.default_rng(500 + step)
  x = rng.standard_normal((BATCH, DIM)).astype(np.float32)
  w = np.linspace(-1, 1, DIM)
  y = (x @ w + rng.standard_normal(BATCH)).astype(np.float32)
  return x, y


def main(argv):
  out = argv[0]
  if len(argv) > 1:
    from train import distributed

    distributed.initialize(distributed.Options(
        coordinator=argv[1], num_processes=int(argv[2]), process_id=int(argv[3]),
        init_timeout_s=120, heartbeat_timeout_s=30))
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  import numpy as np
  import optax

  import gradvar_optax

  mesh = Mesh(np.array(jax.devices()), ("batch",))
  opt = gradvar_optax.reduce_on_stationarity(optax.sgd(0.1), axis_name="batch", test_every=5,
                                             min_samples=16, keep_fraction=0.5, capacity=64)

  def loss_fn(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2) / 2

  def replica_step(params, state, x, y):
    # Each replica's own gradient, averaged by the step as usual; axis_name then averages
    # delta too (here identical on every replica, so the mean must change nothing).
    grads = jax.lax.pmean(jax.grad(loss_fn)(params, x, y), "batch")
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(jax.shard_map(replica_step, mesh=mesh,
                               in_specs=(P(), P(), P("batch"), P("batch")),
                               out_specs=(P(), P()), check_vma=False))
  replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
  glob = lambda tree, sharding: jax.tree.map(
      lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), tree)
  params0 = {"w": np.zeros(DIM, np.float32), "b": np.zeros((), np.float32)}
  params = glob(params0, replicated)
  state = glob(jax.tree.map(np.asarray, opt.init(params0)), replicated)
  per_process = BATCH // jax.process_count()
  lo = jax.process_index() * per_process
  local = lambda v: np.asarray(v.addressable_data(0)).tolist()
  record = {"process_count": jax.process_count(), "device_count": jax.device_count(), "steps": []}
  for t in range(STEPS):
    x, y = batch(t)
    params, state = step(params, state, glob(x[lo:lo + per_process], rows),
                         glob(y[lo:lo + per_process], rows))
    record["steps"].append({name: local(getattr(state, name)) for name in (
        "lr_scale", "drops", "count", "test_step", "test_mean", "test_lower", "test_upper")})
  record["params"] = jax.tree.map(local, params)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(record, f)


if __name__ == "__main__":
  main(sys.argv[1:])

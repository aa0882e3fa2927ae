"""benchmarks/perf/gns_temporal.py: the observer leaves gns unchanged, and the bias report is right.

The report is checked on synthetic gradients: with a stationary gradient distribution the
consecutive-step estimate is unbiased (its means match the exact estimator's), and with a mean
gradient that rotates between steps it underestimates |G|^2 and overestimates the noise, as the
drift predicts.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.perf import gns_temporal
import gradvar_optax


def test_observer_passes_gns_through_and_reports_the_pair():
  rows = []
  opt = gradvar_optax.gns(optax.adam(1e-2), warmup_steps=1)
  seen = gns_temporal.observe(opt, rows.append)
  params = {"w": jnp.array([1.0, -1.0]), "b": jnp.array(0.5)}
  s_plain, s_seen = opt.init(params), seen.init(params)
  grads = [{"w": jnp.array([0.3, -0.2]), "b": jnp.array(0.1)},
           {"w": jnp.array([-0.1, 0.4]), "b": jnp.array(0.2)}]
  for g, q in zip(grads, [0.5, 0.7]):
    u_plain, s_plain = opt.update(g, s_plain, params, group_sq_norm=q, num_groups=4)
    u_seen, s_seen = seen.update(g, s_seen, params, group_sq_norm=q, num_groups=4)
    for a, b in zip(jax_leaves(u_plain), jax_leaves(u_seen)):
      np.testing.assert_array_equal(a, b)
  assert float(gradvar_optax.noise_to_signal(s_seen)) == float(
      gradvar_optax.noise_to_signal(s_plain))
  assert [r["step"] for r in rows] == [1.0, 2.0]
  np.testing.assert_allclose(rows[1]["cross"], -0.03 - 0.08 + 0.02, rtol=1e-6)
  np.testing.assert_allclose(rows[1]["prev2"], 0.09 + 0.04 + 0.01, rtol=1e-6)
  np.testing.assert_allclose(rows[1]["g2"], 0.01 + 0.16 + 0.04, rtol=1e-6)
  np.testing.assert_allclose(rows[1]["q"], 0.7, rtol=1e-6)
  assert rows[1]["m"] == 4.0 and rows[0]["prev2"] == 0.0


def jax_leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _synthetic(tmp_path, drift):
  """Each step: 4 groups ~ N(mu_t, I) in 50 dims, mu_t of norm 2 rotating by `drift` rad a step."""
  rng = np.random.default_rng(0)
  d, m, steps = 50, 4, 4000
  rows = []
  prev = np.zeros(d)
  for t in range(steps):
    mu = np.zeros(d)
    mu[0], mu[1] = 2 * np.cos(drift * t), 2 * np.sin(drift * t)
    groups = mu + rng.normal(size=(m, d))
    g = groups.mean(0)
    rows.append({"step": t + 1, "g2": g @ g, "prev2": prev @ prev, "cross": g @ prev,
                 "q": float(np.mean(np.sum(groups ** 2, 1))), "m": float(m)})
    prev = g
  (tmp_path / "temporal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "config.json").write_text(json.dumps(
      {"task": "synthetic", "lr": 0.0, "seed": 0, "epochs": 2, "batch_size": 32}))
  return gns_temporal.report(tmp_path)["run"]


def test_report_is_unbiased_without_drift_and_biased_with_it(tmp_path):
  # Batch noise tr Cov(g_B) = d / m = 12.5, |G|^2 = 4, r = 3.1.
  still = _synthetic(tmp_path, drift=0.0)
  assert abs(still["ratio_of_means_S"] - 1) < 0.05
  assert abs(still["ratio_of_means_G2"] - 1) < 0.05
  assert abs(still["median_ratio_noise_to_signal"] - 1) < 0.25
  # Rotating by 0.5 rad: <mu_t, mu_t-1> = 4 cos 0.5 = 3.51 (x0.88); |mu_t - mu_t-1|^2 / 2 = 0.49
  # joins the noise (x1.04).
  moving = _synthetic(tmp_path, drift=0.5)
  assert abs(moving["ratio_of_means_G2"] - np.cos(0.5)) < 0.06
  assert abs(moving["ratio_of_means_S"] - (1 + 4 * (1 - np.cos(0.5)) / 12.5)) < 0.05
  assert moving["median_ratio_noise_to_signal"] > 1.1

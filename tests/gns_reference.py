"""A plain NumPy statement of gns's estimator and rule, written apart from the library.

The tests replay streams of per-group gradients through it and through gradvar_optax.gns step by
step. It works in float64 and keeps the bias-corrected averages themselves (the library keeps
the uncorrected sums and their weight; both give the same ratios).
"""

import numpy as np

PHI_FLOOR = float(np.finfo(np.float32).eps)


def sq_norm(leaves) -> float:
  return float(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves))


def estimates(group_leaves):
  """S, G^2, |mean|^2 and q from a list of groups, each a list of gradient leaves."""
  n = len(group_leaves)
  mean = [np.mean(np.stack([np.asarray(g[k], np.float64) for g in group_leaves]), 0)
          for k in range(len(group_leaves[0]))]
  q = float(np.mean([sq_norm(g) for g in group_leaves]))
  sq = sq_norm(mean)
  return n * (q - sq) / (n - 1), (n * sq - q) / (n - 1), sq, q


class Reference:
  """Step-by-step NumPy model of one GNSState."""

  def __init__(self, decay=0.99, power=0.5, warmup_steps=100, min_scale=0.01, max_scale=1.0):
    self.decay, self.power, self.warmup_steps = decay, power, warmup_steps
    self.min_scale, self.max_scale = min_scale, max_scale
    self.count = 0
    self.skipped = 0
    self.signal = 0.0   # bias-corrected average of G^2
    self.sq = 0.0       # bias-corrected average of |mean|^2
    self.noise_to_signal = 0.0
    self.phi_ref = 0.0
    self.scale = 1.0

  def step(self, sq, q, n) -> float:
    """Takes one step's |mean gradient|^2, q and N; returns the scale for this step."""
    if n == 1:  # a step without groups: nothing moves, nothing is counted
      return self.scale
    g2 = (n * sq - q) / (n - 1) if n >= 2 else np.nan
    if not (np.isfinite(sq) and np.isfinite(q) and np.isfinite(g2)):
      self.skipped += 1
      return self.scale
    self.count += 1
    # The bias-corrected moving average, written as a running weighted mean.
    weight_old = 1 - self.decay ** (self.count - 1)
    weight = 1 - self.decay ** self.count
    self.signal = (self.decay * weight_old * self.signal + (1 - self.decay) * g2) / weight
    self.sq = (self.decay * weight_old * self.sq + (1 - self.decay) * sq) / weight
    if self.sq > 0:
      phi = float(np.clip(max(self.signal, 0.0) / self.sq, 0, 1))
    else:  # a mean gradient always zero: no signal, and no noise either if q was zero too
      phi = 0.0 if self.signal < 0 else 1.0
    self.phi = phi
    self.noise_to_signal = (1 - phi) / max(phi, PHI_FLOOR)
    if self.count == self.warmup_steps:
      self.phi_ref = phi
    if self.phi_ref > 0:
      self.scale = float(np.clip((phi / self.phi_ref) ** self.power, self.min_scale,
                                 self.max_scale))
    else:
      self.scale = 1.0
    return self.scale

  def step_groups(self, group_leaves) -> float:
    _, _, sq, q = estimates(group_leaves)
    return self.step(sq, q, len(group_leaves))


def group_stream(steps, groups=4, seed=0, noise=(0.2, 3.0), shapes=((3, 4), (5,))):
  """Per-step lists of per-group gradient leaves: a slowly turning true gradient plus noise
  whose size moves from noise[0] to noise[1] over the stream, so the ratio r rises. The true
  gradient's coordinates stay standard normal, so |G|^2 stays about the number of elements."""
  rng = np.random.default_rng(seed)
  true = [rng.standard_normal(s) for s in shapes]
  out = []
  for t in range(steps):
    sigma = noise[0] + (noise[1] - noise[0]) * t / max(steps - 1, 1)
    true = [0.98 * g + np.sqrt(1 - 0.98**2) * rng.standard_normal(g.shape) for g in true]
    out.append([[(g + sigma * rng.standard_normal(g.shape)).astype(np.float32) for g in true]
                for _ in range(groups)])
  return out


def mean_and_q(groups):
  """The float32 mean gradient leaves and q, as a caller hands them to gns."""
  mean = [np.mean(np.stack([g[k] for g in groups]), 0).astype(np.float32)
          for k in range(len(groups[0]))]
  q = np.float32(np.mean([sq_norm(g) for g in groups]))
  return mean, q

"""A plain NumPy statement of the seed's rule, written independently of the library.

The tests replay synthetic gradient streams through it and through gradvar_optax step by step.
"""

import numpy as np


class Reference:
  """Step-by-step NumPy model of one GradVarState (float64 maths, float32 scale steps)."""

  def __init__(self, window=5, factor=0.1, min_scale=0.1, max_scale=10.0, tolerance=0.0,
               smoothing=0.0, eps=1e-12):
    self.window, self.factor, self.tolerance, self.smoothing, self.eps = (
        window, factor, tolerance, smoothing, eps)
    self.min_scale, self.max_scale = min_scale, max_scale
    self.norms = np.zeros(window)
    self.count = 0
    self.skipped = 0
    self.variability = 0.0
    self.reference = 0.0
    self.scale = np.float32(np.clip(1.0, min_scale, max_scale))

  def step(self, leaves) -> np.float32:
    """Takes one step's gradient leaves; returns the scale that applies to this step."""
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves))
    if not np.isfinite(norm):
      self.skipped += 1
      return self.scale
    self.norms[self.count % self.window] = norm
    self.count += 1
    if self.count % self.window:
      return self.scale
    v = self.norms.std() / (self.norms.mean() + self.eps)
    if self.count == self.window:  # first decision: nothing to compare with yet
      self.reference = v
    else:
      multiplier = 1.0
      if v > self.reference * (1 + self.tolerance):
        multiplier = 1 - self.factor
      elif v < self.reference * (1 - self.tolerance):
        multiplier = 1 + self.factor
      self.scale = np.float32(np.clip(self.scale * np.float32(multiplier), self.min_scale,
                                      self.max_scale))
      self.reference = self.smoothing * self.reference + (1 - self.smoothing) * v
    self.variability = v
    return self.scale


def stream(kind: str, steps: int, window: int = 5, seed: int = 0):
  """Synthetic gradient pytrees whose norm variability follows `kind`.

  Every gradient is a fixed direction times a per-step magnitude 1 + a_k z_t, with z_t ~ N(0,1)
  and a per-window amplitude a_k (at most 0.4) that rises, falls or is random, so the windows'
  variabilities are well apart and no decision hangs on a rounding tie.
  """
  rng = np.random.default_rng(seed)
  direction = {"a": rng.standard_normal((3, 4)).astype(np.float32),
               "b": {"c": rng.standard_normal(5).astype(np.float32)}}
  windows = -(-steps // window)
  # Ramps of 10 windows, x1.5 per window, repeated: mostly rises (or falls), one jump per ramp.
  if kind == "rising":
    amp = 0.01 * 1.5 ** (np.arange(windows) % 10)
  elif kind == "falling":
    amp = 0.01 * 1.5 ** (9 - np.arange(windows) % 10)
  elif kind == "random":
    amp = rng.uniform(0.01, 0.4, windows)
  elif kind in ("constant", "zero"):
    amp = np.zeros(windows)
  else:
    raise ValueError(kind)
  out = []
  for t in range(steps):
    mag = 0.0 if kind == "zero" else 1.0 + amp[t // window] * rng.standard_normal()
    out.append({"a": direction["a"] * np.float32(mag),
                "b": {"c": direction["b"]["c"] * np.float32(mag)}})
  return out


def poison(grads, every: int, seed: int = 0):
  """Replaces every `every`-th step's gradient with one holding a NaN or an Inf."""
  rng = np.random.default_rng(seed)
  out = []
  for t, g in enumerate(grads):
    if t % every == every - 1:
      bad = np.nan if rng.random() < 0.5 else np.inf
      g = {"a": g["a"].copy(), "b": {"c": g["b"]["c"].copy()}}
      g["a"][0, 0] = bad
    out.append(g)
  return out

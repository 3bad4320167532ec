# Two entry points, both working from a fresh clone with only Python installed:
#   make demo   - set up and train the tutorial classifier on bundled real data
#   make check  - set up and run every test, ruff, mypy and the docs build
#   make docs   - build the documentation into docs/_build/html (warnings are errors)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo check test test-fast lint typecheck docs bench clean

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

check: test lint typecheck docs

test: $(VENV)/.dev
	$(PY) -m pytest -q

# The fast part of the suite, for iterating: leaves out the tests marked slow (subprocess
# jobs, torchrun, examples, ONNX export).
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests examples benchmarks docs
	$(VENV)/bin/ruff format --check src tests examples benchmarks docs

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

# -n: every reference to a helios or pyblaze object must resolve; -W: any warning fails.
docs: $(VENV)/.dev
	$(PY) -m sphinx -b html -n -W --keep-going -q docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

bench: $(VENV)/.dev
	$(PY) benchmarks/bench_fit.py

clean:
	rm -rf $(VENV) digits_run pyblaze_output docs/_build docs/api/generated

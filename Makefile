# Entry points, all working from a fresh clone with only Python installed:
#   make demo          - set up and train the tutorial classifier on bundled real data
#   make check         - set up from the lock and run every test, ruff, mypy and the docs build
#   make check-latest  - the same in .venv-latest, on the newest release of every dependency
#   make lock          - regenerate constraints.txt (the lock) from the newest releases
#   make docs          - build the documentation into docs/_build/html (warnings are errors)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check

# The tested PyTorch. On the development machines this resolves to a local CPU wheel; any
# other torch spec would download the multi-GB CUDA build.
TORCH := torch==2.13.0
# The lock: every package the extras need, transitively, at one exact version (the build
# backend too). The package's own requirements in pyproject.toml stay ranges.
LOCK := constraints.txt
# `make check-latest` installs the newest releases into its own venv, pinning only torch.
LATEST_VENV := .venv-latest
# `make lock` resolves with uv (pinned here, installed into its own venv) against the package
# index and the folder of the local torch wheel, taken from pip's configuration.
UV := uv==0.13.9
TOOLS_VENV := .venv-tools
TORCH_WHEELS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

.PHONY: demo check check-latest lock test test-fast lint typecheck docs bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed first, pinned, so nothing can pull the multi-GB CUDA build.
$(VENV)/.torch: $(VENV)/bin/python
	$(PIP) "$(TORCH)"
	@touch $@

# LATEST=1 (set by check-latest): the newest release of everything but torch, not the lock.
ifeq ($(LATEST),1)
$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	echo "$(TORCH)" > $(VENV)/torch-pin.txt
	$(PIP) -c $(VENV)/torch-pin.txt --upgrade setuptools wheel
	$(PIP) -c $(VENV)/torch-pin.txt --upgrade --upgrade-strategy eager --no-build-isolation \
		-e ".[dev]"
	$(PY) -m pip check
	@touch $@
else
# Exactly the lock, then the package itself with no index: a dependency the lock lacks (or
# holds at a version out of range) fails here instead of installing unpinned; `make lock`.
$(VENV)/.dev: $(VENV)/.torch pyproject.toml $(LOCK)
	$(PIP) -r $(LOCK)
	$(PIP) --no-index --no-build-isolation -e ".[dev]" || { echo "error: $(LOCK) lacks \
	a dependency of pyproject.toml (or holds it out of range): run make lock"; exit 1; }
	$(PY) -m pip check
	@touch $@
endif

$(VENV)/.examples: $(VENV)/.torch pyproject.toml $(LOCK)
	$(PIP) -c $(LOCK) setuptools wheel
	$(PIP) -c $(LOCK) --no-build-isolation -e ".[examples]"
	@touch $@

demo: $(VENV)/.examples
	$(PY) examples/digits_classifier.py

check: test lint typecheck docs

# A fresh venv each time, so every dependency is at its newest release today; the packages
# whose newest release differs from the lock are listed first.
check-latest:
	rm -rf $(LATEST_VENV)
	$(MAKE) --no-print-directory $(LATEST_VENV)/.dev VENV=$(LATEST_VENV) LATEST=1
	@$(LATEST_VENV)/bin/python -m pip freeze --all --exclude-editable | tr 'A-Z_' 'a-z-' \
		| grep -v '^pip==' | sort > $(LATEST_VENV)/newest.txt
	@grep '==' $(LOCK) | tr 'A-Z_' 'a-z-' | sort > $(LATEST_VENV)/locked.txt
	@echo "check-latest: newest releases that differ from $(LOCK) (< locked, > newest):"
	@diff $(LATEST_VENV)/locked.txt $(LATEST_VENV)/newest.txt | grep '^[<>]' || echo "  none"
	$(MAKE) --no-print-directory check VENV=$(LATEST_VENV) LATEST=1

lock: $(TOOLS_VENV)/bin/uv
	@test -n "$(TORCH_WHEELS)" || { echo "error: make lock needs the folder of the local \
	CPU torch wheel (pip's find-links); give it as TORCH_WHEELS=<folder>"; exit 1; }
	printf '%s\n' "$(TORCH)" "setuptools>=68" "wheel" \
		| $(TOOLS_VENV)/bin/uv pip compile pyproject.toml - --all-extras --upgrade \
		--python-version 3.11 $(addprefix --find-links ,$(TORCH_WHEELS)) \
		--custom-compile-command "make lock" --quiet -o $(LOCK)

$(TOOLS_VENV)/bin/uv:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "$(UV)"

# Two pytest-xdist workers (CI has 2 cores). --dist loadgroup hands each test to whichever
# worker is free, except that tests marked @pytest.mark.xdist_group(name) all run on one
# worker, one after another (for tests that must not run against each other).
# The docs pages run afterwards in one plain process: pyblaze's predictor forks its workers,
# and a fork inside an xdist worker (whose I/O thread may hold a lock at that moment) once
# hung the tutorial page's predict.
TEST_WORKERS ?= 2
test: $(VENV)/.dev
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --ignore=tests/docs
	$(PY) -m pytest -q -p no:xdist tests/docs

# The fast part of the suite, for iterating: leaves out the tests marked slow (subprocess
# jobs, torchrun, examples, ONNX export).
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup

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
	rm -rf $(VENV) $(LATEST_VENV) $(TOOLS_VENV) digits_run pyblaze_output docs/_build \
		docs/api/generated

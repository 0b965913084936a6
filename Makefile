# The two commands of README.md. Each creates (or reuses) .venv/ with the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench env clean-env

demo: $(STAMP)
	$(VENV)/bin/implant-planner demo --out output

# The whole suite in two steps: the fast tests (a few minutes on 2 cores), then the long real-CT runs marked slow
# (the contrast chest CT is fetched into a cache on first use). `make test-fast` runs the first step only.
test: test-fast
	$(PY) -m pytest -n 2 -q -m slow Testing

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -q -m "not slow" Testing

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/run_benchmarks.py

env: $(STAMP)

# Reinstalled whenever the pins or the package metadata change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

clean-env:
	rm -rf $(VENV)

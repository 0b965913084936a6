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
# A test whose worker process dies (a segfault or the kernel's out-of-memory killer; the CI saw one once, not reproduced:
# measured peaks are 5.6 GB per worker) is run once more; a test that fails (an assertion or any Python error) is never
# rerun, since --only-rerun matches no exception name.
CRASH_RERUN := --reruns 1 --only-rerun WorkerProcessDied

test: test-fast
	$(PY) -m pytest -n 2 -q -m slow $(CRASH_RERUN) Testing

test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -q -m "not slow" $(CRASH_RERUN) Testing

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

# cp_flatnorm developer entry points. `make test` and `make demo` work on a fresh clone:
# they create (or reuse) .venv with a Python >= 3.12 and install the package into it.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

.PHONY: venv test lint docs demo bench bench-quick clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || "$$(bin/find-python)" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

lint: $(STAMP)
	$(PY) -m flake8 python compat tests bench

test: $(STAMP) lint
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

# The site goes to doc/_build/html (git ignores it); warnings are errors, as in tests/test_docs.py.
docs: $(STAMP)
	$(PY) -m sphinx -b html -W --keep-going -q doc doc/_build/html
	@echo "The documentation is in doc/_build/html/index.html"

demo: $(STAMP)
	$(PY) -m lsst.cp.flatnorm.sim.demo --output $(DEMO_DIR)

# The bench extra adds ccdproc, a peer in the combine benchmark (skipped, with the reason, without it).
$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

bench: $(VENV)/.bench-installed
	$(PY) -m bench.run_all

bench-quick: $(STAMP)
	$(PY) -m bench.run_all --quick

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench/output doc/_build doc/py-api doc/lsst.cp.flatnorm/api.rst

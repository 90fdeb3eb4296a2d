# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint bench clean bytecode

$(BIN)/cog-pipeline: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,test]'
	touch $@

# The demo's local S3 server is the extra `demo` (moto[server]): installed here if missing.
demo: $(BIN)/cog-pipeline
	@$(BIN)/python -c 'import moto.server' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[demo]'
	$(BIN)/cog-pipeline demo

# The full suite on TEST_WORKERS pytest-xdist workers: a test mostly waits (on Snakemake, its jobs, the S3
# servers, the pool), so more workers than cores pay. --dist loadgroup runs each costly session fixture on
# one worker only (tests/conftest.py xdist_group: the HTCondor pool, the Ceph RGW cluster, the built wheel).
TEST_WORKERS ?= 4
test: $(BIN)/cog-pipeline bytecode
	$(PYTEST) -n $(TEST_WORKERS) --dist loadgroup

# The package's bytecode, written even where PYTHONDONTWRITEBYTECODE is set (as on these machines): every tick
# of the suite starts a few Pythons that import it (Snakemake, its jobs), and without .pyc files each one
# compiles the package from source again (about 0.1 s of CPU per process). An editable install writes none.
bytecode: $(BIN)/cog-pipeline
	@PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q cog_pipeline scripts > /dev/null

# pytest with its bytecode cache on, even where PYTHONDONTWRITEBYTECODE is set: without it each worker (and
# the controller) rewrites and compiles every test module again, 4 CPU-seconds of collection instead of 1.6.
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

# The quick tier (about a minute on 2 cores): every module, no test marked slow (over ~3 s), none of the
# real-server suites (Ceph RGW: tests/faults/test_servers.py, HTCondor pool: tests/pool), and the two slow
# tests of files owned elsewhere deselected by name. `make test` runs everything.
CHECK_DESELECT := \
	--deselect tests/faults/test_endpoint_probe.py::test_manifest_redelivered_during_a_claim_is_processed_never_lost \
	--deselect tests/test_config.py::test_the_site_config_reaches_run_yaml_and_the_outputs
# Its tests wait more than they compute too: on 3 workers it takes about half the time of one.
CHECK_WORKERS ?= 3
check: $(BIN)/cog-pipeline bytecode
	$(PYTEST) -q -n $(CHECK_WORKERS) -m "not slow" --ignore=tests/faults/test_servers.py --ignore=tests/pool \
		$(CHECK_DESELECT)

# ruff (lint and format; config in pyproject.toml), mypy on cog_pipeline, and snakemake --lint on a generated
# run directory (that last one is also part of `make test`). CI (.ci/run) runs this before the tests.
LINT_PATHS := cog_pipeline tests bench scripts setup.py
lint: $(BIN)/cog-pipeline
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests/test_workflow.py -k lint

bench: $(BIN)/cog-pipeline
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache

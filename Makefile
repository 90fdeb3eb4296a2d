# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/cog-pipeline: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/cog-pipeline
	$(BIN)/cog-pipeline demo

test: $(BIN)/cog-pipeline
	$(BIN)/python -m pytest

# snakemake --lint on a generated run directory (also part of `make test`)
lint: $(BIN)/cog-pipeline
	$(BIN)/python -m pytest -q tests/test_workflow.py -k lint

bench: $(BIN)/cog-pipeline
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache

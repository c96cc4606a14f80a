# Set-up and checks. `make demo` and `make test` work on a fresh machine: they create .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench-mixture clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/slice-agent demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest --doctest-modules

test: lint typecheck unit

bench-mixture: install
	$(BIN)/python bench/mixture_fit.py --out docs/bench/mixture_fit.json

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

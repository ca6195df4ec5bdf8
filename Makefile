# One command each: `make demo` sets up and runs the main job; `make test` sets up and runs the tests;
# `make lint` sets up and checks the style (ruff's linter and formatter) and the types (mypy).
# `make demo DEMO_ARGS=--no-train` serves the untrained experts only (no adapter training beside the service).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=

.PHONY: demo test lint install clean

install: $(VENV)/.installed

# scripts/install.sh is also what the container image's build stage runs (one install procedure).
$(VENV)/.installed: pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh --venv $(VENV) --editable --extras dev
	touch $@

demo: install
	$(BIN)/rr demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest

# The rules and the checked packages live in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app experts router index

clean:
	rm -rf $(VENV) data/experts .pytest_cache

# Set-up and everyday commands. `make demo` and `make test` each build .venv first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"

install: $(BIN)/python

# The main job on built-in generated data (no download): train MobileNet V1 on the shapes classes.
demo: $(BIN)/python
	$(BIN)/python -m toolkit

# The whole test suite. pytest's exit code 5 (no tests collected) counts as a failure here too.
test: $(BIN)/python
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(BIN)/python
	$(BIN)/ruff check .

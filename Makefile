# dnntune: every target creates/updates the same virtualenv, so a fresh clone needs only
# Python 3.11, pip and make.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv bench proto clean

venv: $(STAMP)

# Reinstall whenever the project's metadata changes; the stamp keeps repeat runs fast.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dnntune analyze --objective energy-first

lint: $(STAMP)
	$(BIN)/ruff check dnntune cloud_server device_agent tests benchmarks
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=15

test: lint unit

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# After editing proto/: regenerate the committed dnntune/v1/ (tests fail until you do).
proto: $(STAMP)
	$(BIN)/python -m dnntune.protocol

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

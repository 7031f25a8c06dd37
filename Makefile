# One target per habit; README and CI call these same targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gatewayd demo -c config/demo.toml --campaign

lint: $(STAMP)
	$(BIN)/ruff check gatewayd tests bench
	$(BIN)/mypy --strict gatewayd
	$(BIN)/mypy --strict bench

unit: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test: lint unit

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .gatewayd .pytest_cache .mypy_cache .ruff_cache

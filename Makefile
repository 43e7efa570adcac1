PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= jobd.toml.example

.PHONY: run test lint typecheck bench bench-quick check clean

$(BIN)/jobd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/jobd

run: $(BIN)/jobd
	mkdir -p state
	$(BIN)/jobd serve -c $(CONFIG)

check: $(BIN)/jobd
	$(BIN)/jobd check -c $(CONFIG)

# ruff, mypy --strict on jobd/ and the import contracts of pyproject.toml.
lint: $(BIN)/jobd
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

typecheck: lint

test: $(BIN)/jobd lint
	bash scripts/ensure-chromium
	bash scripts/ensure-postgres
	$(BIN)/python -m pytest -q

bench: $(BIN)/jobd
	bash scripts/ensure-postgres
	$(BIN)/python -m bench

bench-quick: $(BIN)/jobd
	bash scripts/ensure-postgres
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) state build *.egg-info

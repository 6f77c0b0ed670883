# cniwarden developer entry points. `make test` and `make demo` set up
# everything they need first (Debian packages, the venv, pinned tools).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup debs venv tools test lint typecheck unit integration e2e bench plugins \
        cluster-up cluster-down demo clean

setup: debs venv tools

debs:
	./scripts/install-debian-packages.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

# Pinned Go-built tools (kube-* v1.33, etcd, helm, kwok, cnitool) into .tools/bin.
tools: debs
	./tools/build-tools.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit

# The whole suite, as CI runs it.
test: setup lint typecheck
	$(BIN)/pytest tests

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache

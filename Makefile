# powercap — every step a newcomer or CI needs. `make test` is what .ci/run calls.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPORT_DIR ?= out/report

.PHONY: help venv demo test unit lint typecheck bench clean

help:
	@echo "make demo   - compare every strategy on the embedded default scenario, write a report"
	@echo "make test   - lint, type-check and run every test"
	@echo "make bench  - run the benchmarks (results: benchmarks/README.md)"
	@echo "make lint   - ruff and mypy only"

$(STAMP): pyproject.toml
	@echo ">> creating virtualenv in $(VENV) and installing powercap with its dev dependencies"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/powercap compare --report $(REPORT_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check placement extender tests benchmarks e2e
	$(VENV)/bin/ruff format --check placement extender tests benchmarks e2e
	$(VENV)/bin/mypy

typecheck: lint

unit: $(STAMP)
	$(PY) -m pytest -q

test: lint unit

bench: $(STAMP)
	@echo ">> planner: 1,000 nodes, 150 domains, 50 services, T = 144"
	$(PY) -m benchmarks.planner
	@echo ">> placement quality on a ServeGen-built scenario (../shared/data)"
	$(PY) -m benchmarks.quality
	@echo ">> extender latency: compute and HTTP"
	$(PY) -m benchmarks.extender

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: tools
tools: $(STAMP)
	$(PY) -m e2e.toolchain

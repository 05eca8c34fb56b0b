# powercap — every step a newcomer or CI needs. `make test` is what .ci/run calls.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPORT_DIR ?= out/report

.PHONY: help venv demo compare test unit e2e lint typecheck bench clean

help:
	@echo "make demo   - the default scenario on a local KWOK cluster: kube-scheduler with the"
	@echo "              extender vs without it, a per-domain table and a report"
	@echo "make compare - every offline strategy on the default scenario (no cluster)"
	@echo "make test   - lint, type-check and run every test (unit, then e2e)"
	@echo "make e2e    - the e2e tests on a local KWOK cluster (builds the toolchain once)"
	@echo "make bench  - run the benchmarks (results: benchmarks/README.md)"
	@echo "make lint   - ruff, mypy and the import contracts (lint-imports) only"
	@echo "make image  - the container image localhost/powercap-scheduler:<version> (buildah)"
	@echo "make lock   - refresh requirements/*.lock (uv, with hashes)"
	@echo "make crds   - regenerate manifests/crds/*.yaml from the pydantic models"
	@echo "make gpu-check - read each NVIDIA GPU's power limits and draw through NVML (sets nothing)"

# The dev lock (dev and report extras), hashes checked; then the project itself, built with
# the setuptools the lock installed.
$(STAMP): pyproject.toml requirements/dev.lock
	@echo ">> creating virtualenv in $(VENV) and installing powercap with its dev dependencies"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --progress-bar off --require-hashes -r requirements/dev.lock
	@$(PY) -m pip install --quiet --progress-bar off --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

# The lock files (docs/deploy.md, "Dependencies and the lock file"): uv, pinned, installed
# into the venv for this target only; Linux x86_64, CPython 3.11. Pins stay as they are
# unless pyproject.toml asks otherwise; `make lock UPGRADE=1` moves them all to the newest.
UV_VERSION := 0.13.9
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 $(if $(UPGRADE),--upgrade) \
  --python-platform x86_64-unknown-linux-gnu --custom-compile-command 'make lock'
.PHONY: lock
lock:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --progress-bar off 'uv==$(UV_VERSION)'
	@echo ">> requirements/runtime.lock, dev.lock, build.lock"
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) pyproject.toml -o requirements/runtime.lock
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) --extra dev --extra report pyproject.toml \
	  -o requirements/dev.lock
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) requirements/build.in -o requirements/build.lock

# localhost/powercap-scheduler:<version> from the Containerfile (e2e/image.py): rebuilt only
# when the Containerfile, a lock file or a copied source file changed. BASE=... picks the base.
.PHONY: image image-tools
image: $(STAMP) image-tools
	$(PY) -m e2e.image $(if $(BASE),--base $(BASE))

# buildah and mmdebstrap come from Debian packages; installed here when missing (needs root).
image-tools:
	@if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing buildah and mmdebstrap from the Debian packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap >/dev/null; \
	  else \
	    echo "buildah or mmdebstrap is missing: install them with 'sudo apt-get install -y buildah mmdebstrap'"; exit 1; \
	  fi; \
	fi

# The default scenario through the real kube-scheduler on a local KWOK cluster, with the
# extender and with the upstream default profile; the first run builds the toolchain.
demo: $(STAMP) tools
	$(VENV)/bin/powercap whatif --kwok --scheduler both --report $(REPORT_DIR)

# The same scenario planned offline by every strategy (no cluster).
compare: $(STAMP)
	$(VENV)/bin/powercap compare --report $(REPORT_DIR)

lint: $(STAMP)
	$(VENV)/bin/ruff check placement extender powercap tests benchmarks e2e
	$(VENV)/bin/ruff format --check placement extender powercap tests benchmarks e2e
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

typecheck: lint

# testpaths is tests/ only, so `unit` never collects the e2e suite; `e2e` runs it on its own.
# After tools: a unit test checks the committed go.sum files against the Go module cache.
unit: $(STAMP) tools
	$(PY) -m pytest -q

# Real kube-apiserver, kube-scheduler and the extender on a throwaway local KWOK cluster.
e2e: $(STAMP) tools image
	$(PY) -m pytest -q e2e -m e2e

test: lint unit e2e

# Read-only, on a machine with NVIDIA GPUs: each GPU's limit constraints, default, set and
# enforced limits and draw through real NVML. It never sets anything; not part of `make test`.
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) -m extender.agent.check

bench: $(STAMP) tools
	@echo ">> planner: 1,000 nodes, 150 domains, 50 services, T = 144"
	$(PY) -m benchmarks.planner
	@echo ">> placement quality on a ServeGen-built scenario (../shared/data)"
	$(PY) -m benchmarks.quality
	@echo ">> carbon: emissions and EUA cost, aware vs oblivious, and emission budgets on GB/FR/DE grids"
	$(PY) -m benchmarks.carbon
	@echo ">> extender latency: compute and HTTP"
	$(PY) -m benchmarks.extender
	@echo ">> the real kube-scheduler on KWOK: 1,000 nodes, 10,000 pods, with and without the extender"
	$(PY) -m benchmarks.kwok throughput
	@echo ">> ServeGen scenario through kube-scheduler + extender vs the offline cpsat plan"
	$(PY) -m benchmarks.kwok servegen

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache

.PHONY: tools prometheus
tools: $(STAMP) prometheus
	$(PY) -m e2e.toolchain

# Prometheus comes from the Debian package; installed here when missing (needs root).
prometheus:
	@if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing Prometheus from the Debian package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else \
	    echo "Prometheus is missing: install it with 'sudo apt-get install -y prometheus'"; exit 1; \
	  fi; \
	fi

# The Helm chart (charts/powercap). Helm reads nothing outside the chart: files/ holds copies
# of the config/ and manifests/ files it shares (edit the originals, then `make chart-sync`);
# values.schema.json is written from the config model. tests/test_chart_files.py checks both.
# manifests/crds/*.yaml from the pydantic models (extender/crds/); tests/test_crds.py checks them.
.PHONY: crds
crds: $(STAMP)
	$(PY) -m extender.crds

.PHONY: chart-schema chart-sync
chart-schema: $(STAMP)
	$(PY) -m extender.config.schema charts/powercap/values.schema.json

chart-sync:
	cp config/powercap.yaml config/resources.yaml config/kube-scheduler.yaml \
	  config/kube-scheduler-mtls.yaml charts/powercap/files/
	rm -f charts/powercap/files/profiles/*.yaml
	cp config/profiles/*.yaml charts/powercap/files/profiles/
	cp manifests/base/admission.yaml charts/powercap/files/
	cp manifests/base/rbac.yaml charts/powercap/files/
	cp manifests/monitoring/prometheusrule.yaml manifests/monitoring/servicemonitor.yaml \
	  manifests/monitoring/grafana-dashboard.json \
	  manifests/monitoring/kube-scheduler/kube-scheduler-metrics.yaml charts/powercap/files/
	mkdir -p charts/powercap/files/crds
	rm -f charts/powercap/files/crds/*.yaml
	cp $(filter-out manifests/crds/kustomization.yaml,$(wildcard manifests/crds/*.yaml)) \
	  charts/powercap/files/crds/

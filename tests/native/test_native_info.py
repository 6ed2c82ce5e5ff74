"""What the patched runtime reports for the tiny llama (issue 3, docs/DESIGN.md §4): its version, rlkv info and
F_l per layer, KV bytes and cells of the full and local (ring) caches, and rlkv.* overrides at load."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from tiny_runtime import (
    load,
    model_info,
)

from rlkv_edge import _native
from rlkv_edge.runtime import kv_bytes, kv_cells


def test_version():
    assert "rlkv-edge" in _native.rlkv_version()


def test_plain_info(tiny_paths):
    llm = load(tiny_paths["plain"])
    info, nf = model_info(llm)
    assert info.enabled == 0 and nf == [2, 2] and info.n_head_kv == 2 and info.n_layer == 2
    full, local = kv_bytes(llm)
    assert full > 0 and local == 0


def test_kv_bytes_formula(tiny_paths):
    # F32 K and V, head_dim 16: bytes per cell and head = 2 * 16 * 4
    llm = load(tiny_paths["s50"], n_ctx=2048, n_ubatch=64, n_batch=64)
    fc, lc = kv_cells(llm)
    full, local = kv_bytes(llm)
    _, nf = model_info(llm)
    per = 2 * 16 * 4
    assert full == per * sum(nf) * fc
    assert local == per * sum(2 - x for x in nf) * lc
    assert fc == 2048 and lc == 256


def test_overrides(tiny_paths):
    llm = load(tiny_paths["s50"], kv_overrides={"rlkv.sparsity": 0.0})
    info, nf = model_info(llm)
    assert nf == [2, 2] and kv_bytes(llm)[1] == 0
    llm = load(tiny_paths["s50"], kv_overrides={"rlkv.sparsity": 1.0, "rlkv.sink_size": 2, "rlkv.window_size": 5})
    info, nf = model_info(llm)
    assert nf == [0, 0] and info.sink_size == 2 and info.window_size == 5


def test_flash_attention_off_warns_with_the_padding(tiny_paths):
    """Without flash attention the transposed V cache pads each layer to the widest: at s = 0.75 (F_l = [1, 0])
    the local cache's layer 0 holds 1 head in rows of 2, and the load says how much is padding; with it, no
    warning. A model whose layers are all alike (s = 0.5: F_l = [1, 1]) pads nothing and does not warn."""
    from rlkv_edge.runtime import _captured_log

    def warning(path, flash_attn):
        with _captured_log() as log:
            load(path, flash_attn=flash_attn)
        return [t for _, t in log if "rlkv: flash attention is off" in t]

    (line,) = warning(tiny_paths["s75"], False)
    # 512 cells in each cache (n_ctx 512), rows of 16 floats per head: the full cache holds layer 0's one head
    # (0.03 MiB); the local one layer 0's one head and layer 1's two, each in rows of two heads (0.125 MiB), one of
    # them padding: 0.03 of 0.16 MiB
    assert "0.03 of its 0.16 MiB (20%) are padding" in line and "-fa on" in line, line
    assert warning(tiny_paths["s75"], True) == []
    assert warning(tiny_paths["s50"], False) == []


@pytest.mark.parametrize("n_seq", [1, 3])
def test_ring_formula_with_sequences(n_seq):
    """rlkv_edge.memory's ring (S + W)·n_seq + n_ubatch, padded to 256, is what the runtime allocates for n_seq
    sequences in one unified cache (what `serve --parallel`'s --kv-budget counts)."""
    import ctypes

    import llama_cpp
    from gguf_fixtures import write_tiny_gguf

    from rlkv_edge import runtime
    from rlkv_edge.memory import ring_cells

    path = write_tiny_gguf(
        Path(tempfile.mkdtemp()) / "ring.gguf",
        rlkv=dict(scores=np.array([[0.9, 0.2], [0.6, 0.4]], np.float32), sparsity=0.5, sink=100, window=60),
    ).path
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = 4096, 64, 64, n_seq, True
    ctx = llama_cpp.llama_init_from_model(model, cp)
    try:
        full, local = ctypes.c_uint32(0), ctypes.c_uint32(0)
        assert runtime.native().llama_rlkv_kv_cells(ctx, ctypes.byref(full), ctypes.byref(local))
        assert local.value == ring_cells(100, 60, 4096, 64, n_seq) == (256 if n_seq == 1 else 768)  # 224, 544 padded
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)

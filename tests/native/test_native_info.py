"""What the patched runtime reports for the tiny llama (issue 3, docs/DESIGN.md §4): its version, rlkv info and
F_l per layer, KV bytes and cells of the full and local (ring) caches, and rlkv.* overrides at load."""

from __future__ import annotations

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

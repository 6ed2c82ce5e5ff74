"""The decode traffic model (rlkv_edge/traffic.py): bytes per decoded token, worked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_fixtures import random_weights, write_tiny_gguf

from rlkv_edge.traffic import DecodeShape, predicted_ratio, weight_bytes

# 2 layers x 2 KV heads, D = 4: a K row + a V row in f16 is 4*2 + 4*2 = 16 bytes
FULL = DecodeShape(weight_bytes=1000, n_layer=2, n_head_kv=2, head_dim_k=4, head_dim_v=4, n_full=4)
HALF = DecodeShape(
    weight_bytes=1000, n_layer=2, n_head_kv=2, head_dim_k=4, head_dim_v=4, n_full=2, sink=2, window=3, ring_cells=256
)


def test_full_cache_bytes() -> None:
    # depth 9: each head reads 10 cells (16 bytes each); each layer's mask spans pad256(10) = 256 f16 entries
    assert FULL.kv_bytes(9) == 16 * 4 * 10 + 2 * 2 * 256
    assert FULL.bytes_per_token(9) == 1000 + 640 + 1024


def test_local_heads_read_only_sinks_and_window() -> None:
    # 2 full heads read 300 cells, 2 local heads read S + W = 5; masks: 2 layers x (300 -> 512 full + 256 ring)
    assert HALF.kv_bytes(299) == 16 * (2 * 300 + 2 * 5) + 2 * 2 * (512 + 256)
    # before the window fills, a local head sees every earlier position, like a full one
    assert HALF.kv_bytes(2) == 16 * (2 * 3 + 2 * 3) + 2 * 2 * (256 + 256)


def test_quantized_rows_and_predicted_ratio() -> None:
    q8 = DecodeShape(**{**FULL.__dict__, "type_k": "q8_0", "type_v": "q8_0"})
    # q8_0: 34 bytes per 32 values -> a 4-value row is 4.25 bytes
    assert q8.kv_bytes(9) == 8.5 * 4 * 10 + 2 * 2 * 256
    # deep enough that weights and the ring are negligible: per cell, 4 heads' rows + 2 layers' f16 mask entries
    depth = 1_000_000
    assert predicted_ratio(q8, FULL, depth) == pytest.approx((4 * 16 + 4) / (4 * 8.5 + 4), rel=1e-3)
    assert predicted_ratio(FULL, FULL, 5) == 1.0
    assert predicted_ratio(HALF, FULL, depth) == pytest.approx((4 * 16 + 4) / (2 * 16 + 4), rel=1e-3)


@pytest.mark.parametrize("tied", [False, True])
def test_weight_bytes(tmp_path: Path, tied: bool) -> None:
    w = random_weights(n_layer=2)
    if tied:
        del w["output.weight"]  # the output projection then reads the whole token_embd
    m = write_tiny_gguf(tmp_path / "m.gguf", weights=w, ftype="F32")
    read = {name: a.nbytes for name, a in m.weights.items()}
    expected = sum(read.values()) - (0 if tied else read["token_embd.weight"])
    assert weight_bytes(m.path) == expected

"""convert's re-encoding uses ggml's own quantizer; check the binding against gguf-py's reference."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from rlkv_edge.convert.ggml_quants import quantize


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0])
def test_matches_gguf_py_reference(qtype: gguf.GGMLQuantizationType) -> None:
    values = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    assert np.array_equal(quantize(values, qtype), gguf.quants.quantize(values, qtype))


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K])
def test_k_quants_round_trip(qtype: gguf.GGMLQuantizationType) -> None:
    values = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
    q = quantize(values, qtype)
    assert q.shape == (4, 512 // 256 * gguf.GGML_QUANT_SIZES[qtype][1])
    back = gguf.quants.dequantize(q, qtype)
    err = np.abs(back - values).mean() / np.abs(values).mean()
    assert err < (0.12 if qtype == gguf.GGMLQuantizationType.Q4_K else 0.04), err

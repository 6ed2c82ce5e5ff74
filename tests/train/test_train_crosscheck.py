"""The trainer's attention on a GGUF loaded by transformers: the hook the runtime agreement test uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from crosscheck import binary_gates, gguf_gated_logits, load_gguf_model
from gguf_fixtures import write_tiny_gguf

from rlkv_edge.train.attention import local_mask

torch.set_num_threads(2)
TOKENS = [1, *range(260, 300), *range(270, 290)]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_gated_logits_extremes(tmp_path: Path, arch: str) -> None:
    """s = 0 gives the stock logits; s = 1 the stock model under an explicit sink+window mask."""
    tiny = write_tiny_gguf(tmp_path / f"tiny-{arch}.gguf", arch=arch)
    scores = np.random.default_rng(0).random((tiny.n_layer, tiny.n_head_kv)).astype(np.float32)
    ids = torch.tensor([TOKENS])
    stock = load_gguf_model(tiny.path)
    with torch.no_grad():
        plain = stock(input_ids=ids).logits[0].double().numpy()
        causal = torch.ones(len(TOKENS), len(TOKENS), dtype=torch.bool).tril()[None, None]
        windowed = stock(input_ids=ids, attention_mask=local_mask(causal, 4, 8)).logits[0].double().numpy()
    full = gguf_gated_logits(tiny.path, scores, 0.0, 4, 8, TOKENS)
    local = gguf_gated_logits(tiny.path, scores, 1.0, 4, 8, TOKENS)
    half = gguf_gated_logits(tiny.path, scores, 0.5, 4, 8, TOKENS)
    np.testing.assert_allclose(full, plain, atol=1e-5)
    np.testing.assert_allclose(local, windowed, atol=1e-4)
    assert np.abs(half - plain).max() > 1e-3 and np.abs(half - local).max() > 1e-3
    assert binary_gates(scores, 0.5).sum() == 2

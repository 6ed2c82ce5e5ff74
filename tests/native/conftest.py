"""Fixtures of the native runtime tests: the tiny llama and its rlkv variants at several sparsities."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_runtime import SINK, WINDOW, sorted_scores, tiny_llama, write_gguf


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The tiny random llama (TinyModel: shape and float32 weights) the reference runs on."""
    return tiny_llama(tmp_path_factory.mktemp("rlkv_native_model") / "tiny.gguf", seed=1)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory, weights):
    d = tmp_path_factory.mktemp("rlkv_native")
    rng = np.random.default_rng(5)
    scores = sorted_scores(rng, weights.n_layer, weights.n_head_kv)
    # F_l = [1, 1] at s = 0.5 would depend on the scores; pick scores that give a mixed layer and an all-local one
    scores = np.array([[0.9, 0.2], [0.5, 0.1]], dtype=np.float32)  # s=0.5 -> 2 full heads: (0,0) and (1,0)
    paths = {
        "plain": write_gguf(d / "plain.gguf", weights),
        "s0": write_gguf(d / "s0.gguf", weights, rlkv=dict(scores=scores, sparsity=0.0, sink=SINK, window=WINDOW)),
        "s50": write_gguf(d / "s50.gguf", weights, rlkv=dict(scores=scores, sparsity=0.5, sink=SINK, window=WINDOW)),
        "s75": write_gguf(d / "s75.gguf", weights, rlkv=dict(scores=scores, sparsity=0.75, sink=SINK, window=WINDOW)),
        "s100": write_gguf(d / "s100.gguf", weights, rlkv=dict(scores=scores, sparsity=1.0, sink=SINK, window=WINDOW)),
        "scores": scores,
        "dir": d,
    }
    return paths

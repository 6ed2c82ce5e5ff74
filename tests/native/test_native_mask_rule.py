"""The mask rule in C++ (native/rlkv/rlkv-meta.cpp, through the C API) agrees with rlkv_edge/masks.py on random,
tied, equal and signed scores at rounding-boundary sparsities, and refuses invalid input (docs/DESIGN.md §2)."""

from __future__ import annotations

import numpy as np
from tiny_runtime import (
    c_mask_rule,
)


def test_mask_rule_matches_python():
    from rlkv_edge.masks import full_head_mask, full_heads_per_layer

    rng = np.random.default_rng(0)
    n_checked = 0
    for i in range(200):
        L, H = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        kind = i % 4
        if kind == 0:
            scores = rng.random((L, H)).astype(np.float32)
        elif kind == 1:  # many ties
            scores = rng.integers(0, 3, size=(L, H)).astype(np.float32) / 2
        elif kind == 2:  # all equal
            scores = np.full((L, H), 0.5, dtype=np.float32)
        else:
            scores = (rng.random((L, H)) * 2 - 1).astype(np.float32)
            scores[rng.random((L, H)) < 0.3] = 0.0
        n = L * H
        # sparsities at .5 rounding boundaries of (1 - s) * n, exact and near, plus random ones
        j = int(rng.integers(0, n + 1))
        cands = [(j + 0.5) / n, 1 - (j + 0.5) / n, j / n, float(rng.random()), 0.0, 1.0]
        s = float(np.float32(cands[i % len(cands)]))
        s = min(max(s, 0.0), 1.0)
        k, nf, mask = c_mask_rule(s, scores)
        assert k == int(mask.sum())
        assert list(nf) == list(full_heads_per_layer(scores, s)), (s, scores)
        assert np.array_equal(mask, full_head_mask(scores, s)), (s, scores)
        n_checked += 1
    assert n_checked == 200
    # invalid input
    assert c_mask_rule(1.5, np.ones((2, 2), np.float32))[0] == -1
    assert c_mask_rule(float("nan"), np.ones((2, 2), np.float32))[0] == -1

"""The mask rule (DESIGN.md §2): which heads keep a full KV cache at a given sparsity.

The same rule is implemented in C++ (native/rlkv/rlkv-meta.cpp); tests/test_masks.py checks that both agree.
"""

from __future__ import annotations

import numpy as np


def n_full_heads(sparsity: float, n_layer: int, n_head_kv: int) -> int:
    """Number of full heads: round_half_even((1 - s) * L * H), with s taken as float32."""
    s = float(np.float32(sparsity))
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    # Python's round() is round-half-to-even on the exact double, as the contract requires.
    return round((1.0 - s) * n_layer * n_head_kv)


def full_head_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean [L, H] mask of full heads: the k_full best by (score desc, layer asc, head asc)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D [n_layer, n_head_kv] array, got shape {scores.shape}")
    n_layer, n_head_kv = scores.shape
    k_full = n_full_heads(sparsity, n_layer, n_head_kv)
    flat = scores.reshape(-1)
    # lexsort sorts by the last key first: score descending, then flat index (= layer, head) ascending.
    order = np.lexsort((np.arange(flat.size), -flat))
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k_full]] = True
    return mask.reshape(n_layer, n_head_kv)


def full_heads_per_layer(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """F_l: the number of full heads in each layer at the given sparsity."""
    return full_head_mask(scores, sparsity).sum(axis=1).astype(np.int64)

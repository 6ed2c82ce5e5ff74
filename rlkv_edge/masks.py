"""The mask rule (docs/DESIGN.md §2): which heads keep a full KV cache at a given sparsity.

The same rule is implemented in C++ (native/rlkv/rlkv-meta.cpp); tests/native/test_native_mask_rule.py checks
that both agree.
"""

from __future__ import annotations

import math

import numpy as np

from rlkv_edge.errors import UsageError


def check_sparsity(sparsity: object, name: str = "sparsity") -> float:
    """`sparsity` if it is a finite number in [0, 1], else a UsageError naming `name` (e.g. --sparsity)."""
    is_number = isinstance(sparsity, int | float | np.floating) and not isinstance(sparsity, bool)
    value = float(sparsity) if is_number else math.nan  # type: ignore[arg-type]
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"{name} must be in [0, 1], got {sparsity}")
    return value


def n_full_heads(sparsity: float, n_layer: int, n_head_kv: int) -> int:
    """Number of full heads: round_half_even((1 - s) * L * H), with s taken as float32."""
    check_sparsity(sparsity)
    s = float(np.float32(sparsity))
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


def boundary_tie(scores: np.ndarray, sparsity: float) -> tuple[int, int, float] | None:
    """(heads tied, how many of them are full, their score) when equal scores straddle the full/local cut.

    The mask rule then picks among them by layer order alone (docs/DESIGN.md §2), which says nothing about which
    heads matter: worth a warning (e.g. gates clamped at 1.0 after a short training run).
    """
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_layer, n_head_kv = np.shape(scores)
    k_full = n_full_heads(sparsity, n_layer, n_head_kv)
    if k_full == 0 or k_full == flat.size:
        return None
    ranked = np.sort(flat)[::-1]
    if ranked[k_full - 1] != ranked[k_full]:
        return None
    value = float(ranked[k_full])
    n_tied = int((flat == value).sum())
    n_full = k_full - int((flat > value).sum())
    return n_tied, n_full, value


def describe_tie(scores: np.ndarray, sparsity: float) -> str | None:
    """One line about a boundary tie (see boundary_tie), or None."""
    tie = boundary_tie(scores, sparsity)
    if tie is None:
        return None
    n_tied, n_full, value = tie
    return (
        f"{n_tied} heads share score {value:g} at the cut: {n_full} of them are full, picked by layer order, "
        "not by the scores"
    )

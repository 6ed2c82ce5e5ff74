"""Reading rlkv.* metadata back, the KV-memory estimate of DESIGN.md §7, and a heat map of scores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from rlkv_edge.masks import describe_tie, full_heads_per_layer

from .model import ConvertError, field_array, field_value, model_info, open_gguf, stored_perm

DEFAULT_UBATCH = 512
CELL_PAD = 256


def read_rlkv_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Model shape and rlkv.* metadata of a GGUF; scores both as stored and in the original head order."""
    p = Path(path)
    reader = open_gguf(p)
    info = model_info(reader, p, check_arch=False)
    out: dict[str, Any] = {
        "path": str(p),
        "architecture": info.architecture,
        "n_layer": info.n_layer,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "head_dim_k": info.head_dim_k,
        "head_dim_v": info.head_dim_v,
        "context_length": info.context_length,
        "converted": field_value(reader, "rlkv.version") is not None,
    }
    if not out["converted"]:
        return out
    f = reader.get_field("rlkv.head_scores")
    if f is None:
        raise ConvertError(f"{p}: has rlkv.version but no rlkv.head_scores")
    stored = field_array(f).astype(np.float32)
    if stored.size != info.n_layer * info.n_head_kv:
        raise ConvertError(
            f"{p}: rlkv.head_scores has {stored.size} entries, expected {info.n_layer} x {info.n_head_kv}"
        )
    stored = stored.reshape(info.n_layer, info.n_head_kv)
    perm = stored_perm(reader, info, p)
    original = np.zeros_like(stored)
    np.put_along_axis(original, perm, stored, axis=1)
    out.update(
        {
            "rlkv_version": int(field_value(reader, "rlkv.version")),
            "sparsity": _float_or_none(field_value(reader, "rlkv.sparsity")),
            "sink_size": _int_or_none(field_value(reader, "rlkv.sink_size")),
            "window_size": _int_or_none(field_value(reader, "rlkv.window_size")),
            "source": field_value(reader, "rlkv.source"),
            "head_scores": stored.tolist(),
            "head_perm": perm.tolist(),
            "scores": original.tolist(),
        }
    )
    return out


def _float_or_none(v: Any) -> float | None:
    """float(v) unless None."""
    return None if v is None else float(v)


def _int_or_none(v: Any) -> int | None:
    """int(v) unless None."""
    return None if v is None else int(v)


def _type_size(name: str) -> float:
    """Bytes per element of a ggml type given by name (f16, q8_0, ...)."""
    try:
        qtype = GGMLQuantizationType[name.upper()]
    except KeyError:
        raise ConvertError(f"unknown KV cache type '{name}' (e.g. f16, f32, bf16, q8_0, q4_0)") from None
    block, size = GGML_QUANT_SIZES[qtype]
    return size / block


def ring_cells(sink: int, window: int, n_ctx: int, n_ubatch: int = DEFAULT_UBATCH) -> int:
    """Cells of a local head's ring: S + W + n_ubatch padded to 256, at most n_ctx (as llama.cpp's iSWA)."""
    want = sink + window + n_ubatch
    padded = (want + CELL_PAD - 1) // CELL_PAD * CELL_PAD
    return min(n_ctx, padded)


def kv_memory(
    info: dict[str, Any],
    sparsity: float,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = DEFAULT_UBATCH,
) -> dict[str, Any]:
    """KV bytes at n_ctx without and with compression (DESIGN.md §7) and F_l per layer."""
    if not (np.isfinite(sparsity) and 0.0 <= sparsity <= 1.0):
        raise ConvertError(f"sparsity must be in [0, 1], got {sparsity}")
    if n_ctx <= 0:
        raise ConvertError(f"context length must be positive, got {n_ctx}")
    n_layer, n_head_kv = info["n_layer"], info["n_head_kv"]
    per_cell_head = info["head_dim_k"] * _type_size(type_k) + info["head_dim_v"] * _type_size(type_v)
    scores = np.asarray(info.get("head_scores") or np.ones((n_layer, n_head_kv)), dtype=np.float32)
    f_l = full_heads_per_layer(scores, sparsity)
    sink = info.get("sink_size") or 64
    window = info.get("window_size") or 256
    ring = ring_cells(sink, window, n_ctx, n_ubatch)
    full_bytes = per_cell_head * n_layer * n_head_kv * n_ctx
    full_part = per_cell_head * int(f_l.sum()) * n_ctx
    local_part = per_cell_head * int((n_head_kv - f_l).sum()) * ring
    return {
        "sparsity": float(np.float32(sparsity)),
        "n_ctx": n_ctx,
        "type_k": type_k,
        "type_v": type_v,
        "n_ubatch": n_ubatch,
        "bytes_per_cell_head": per_cell_head,
        "ring_cells": ring,
        "full_heads_per_layer": f_l.tolist(),
        "n_full": int(f_l.sum()),
        "kv_bytes_uncompressed": round(full_bytes),
        "kv_bytes_full_cache": round(full_part),
        "kv_bytes_local_cache": round(local_part),
        "kv_bytes_compressed": round(full_part + local_part),
        "ratio": (full_part + local_part) / full_bytes if full_bytes else 1.0,
        "assumption": f"ring = min(n_ctx, pad{CELL_PAD}(S + W + n_ubatch={n_ubatch})) cells; "
        f"K {type_k}, V {type_v}; one sequence",
        "tie": describe_tie(scores, sparsity) if info.get("head_scores") is not None else None,
    }


def plot_scores(info: dict[str, Any], path: str | os.PathLike[str], sparsity: float) -> None:
    """Save a layer × head heat map of the scores (original head order), local heads hatched."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConvertError("--plot needs matplotlib (pip install matplotlib)") from None
    if not info.get("converted"):
        raise ConvertError(f"{info['path']}: no rlkv.* metadata to plot (convert it first)")
    scores = np.asarray(info["scores"], dtype=np.float32)
    stored = np.asarray(info["head_scores"], dtype=np.float32)
    perm = np.asarray(info["head_perm"], dtype=np.int64)
    mask_stored = _full_mask(stored, sparsity)
    mask = np.zeros_like(mask_stored)
    np.put_along_axis(mask, perm, mask_stored, axis=1)
    n_layer, n_head = scores.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * n_head + 2), max(3.0, 0.22 * n_layer + 1.5)))
    im = ax.imshow(scores, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ys, xs = np.nonzero(~mask)
    ax.scatter(xs, ys, marker="x", s=12, c="white", linewidths=0.8, label="local")
    ax.set_xlabel("KV head (original order)")
    ax.set_ylabel("layer")
    ax.set_title(f"{info['architecture']} head scores (x = local at s={sparsity:g})")
    fig.colorbar(im, ax=ax, label="score")
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise ConvertError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _full_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Boolean [L, H] full-head mask by the shared mask rule."""
    from rlkv_edge.masks import full_head_mask

    return full_head_mask(scores, sparsity)

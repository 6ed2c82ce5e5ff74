"""KV-cache memory: the byte formula of docs/DESIGN.md §7, sizes like "64MiB", and --kv-budget.

bytes = bytes_per_cell_head · (Σ_l F_l · n_ctx + Σ_l (H − F_l) · ring_cells), implemented once in
`kv_memory`; `choose_sparsity` searches it for the smallest sparsity that fits a budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from rlkv_edge.errors import BudgetError, UsageError
from rlkv_edge.masks import check_sparsity, describe_tie, full_heads_per_layer, n_full_heads

DEFAULT_UBATCH = 512
CELL_PAD = 256

_UNITS = {
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Bytes in a size such as "64MiB", "1.5 GiB", "500MB" or "4096B" (K/M/G are powers of 1000); a number without
    a unit is refused, never read as bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is not None and not unit:
        raise BudgetError(f"size '{text}' has no unit: write e.g. {m.group(1)}MiB, {m.group(1)}GiB or {m.group(1)}B")
    if m is None or unit not in _UNITS:
        raise BudgetError(f"cannot parse size '{text}' (examples: 64MiB, 1.5GiB, 500MB)")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise BudgetError(f"size must be positive, got '{text}'")
    return int(value)


MIB = 2**20


def format_mib(n_bytes: float, digits: int = 2) -> str:
    """Bytes as MiB text, e.g. "98.44 MiB" (thousands separated)."""
    return f"{n_bytes / MIB:,.{digits}f} MiB"


def type_size(name: str) -> float:
    """Bytes per element of a ggml type given by name (f16, q8_0, ...)."""
    try:
        qtype = GGMLQuantizationType[name.upper()]
    except KeyError:
        raise UsageError(f"unknown KV cache type '{name}' (e.g. f16, f32, bf16, q8_0, q4_0)") from None
    block, size = GGML_QUANT_SIZES[qtype]
    return size / block


def ring_cells(sink: int, window: int, n_ctx: int, n_ubatch: int = DEFAULT_UBATCH, n_seq: int = 1) -> int:
    """Cells of a local head's ring: (S + W)·n_seq + n_ubatch padded to 256, at most n_ctx (as llama.cpp's iSWA;
    n_seq sequences in one unified cache, e.g. llama-server's slots)."""
    want = (sink + window) * n_seq + n_ubatch
    padded = (want + CELL_PAD - 1) // CELL_PAD * CELL_PAD
    return min(n_ctx, padded)


def kv_memory(
    info: dict[str, Any],
    sparsity: float,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = DEFAULT_UBATCH,
    n_seq: int = 1,
    sink: int | None = None,
    window: int | None = None,
) -> dict[str, Any]:
    """KV bytes at n_ctx without and with compression (docs/DESIGN.md §7) and F_l per layer (n_seq sequences
    sharing one unified cache of n_ctx cells; sink/window: instead of the file's S and W)."""
    check_sparsity(sparsity)
    if n_ctx <= 0:
        raise UsageError(f"context length must be positive, got {n_ctx}")
    n_layer, n_head_kv = info["n_layer"], info["n_head_kv"]
    per_cell_head = info["head_dim_k"] * type_size(type_k) + info["head_dim_v"] * type_size(type_v)
    scores = np.asarray(info.get("head_scores") or np.ones((n_layer, n_head_kv)), dtype=np.float32)
    f_l = full_heads_per_layer(scores, sparsity)
    sink = sink if sink is not None else info.get("sink_size") or 64
    window = window if window is not None else info.get("window_size") or 256
    ring = ring_cells(sink, window, n_ctx, n_ubatch, n_seq)
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
        "sink": sink,
        "window": window,
        "assumption": f"ring = min(n_ctx, pad{CELL_PAD}((S + W)·{n_seq} + n_ubatch={n_ubatch})) cells; "
        f"K {type_k}, V {type_v}; " + ("one sequence" if n_seq == 1 else f"{n_seq} sequences in one unified cache"),
        "tie": describe_tie(scores, sparsity) if info.get("head_scores") is not None else None,
    }


def sparsity_steps(n_layer: int, n_head_kv: int) -> list[float]:
    """For k_full = L·H down to 0, the smallest float32 sparsity that keeps exactly k_full heads full."""
    total = n_layer * n_head_kv
    steps = []
    down, up = np.float32(0), np.float32(1)
    for k in range(total, -1, -1):
        # n_full rounds (1 - s)·L·H half-even, so k's interval of s starts near 1 - (k + 0.5)/(L·H).
        s = np.float32(max(0.0, 1.0 - (k + 0.5) / total))
        while n_full_heads(float(s), n_layer, n_head_kv) > k:
            s = np.nextafter(s, up)
        while s > 0 and n_full_heads(float(np.nextafter(s, down)), n_layer, n_head_kv) == k:
            s = np.nextafter(s, down)
        steps.append(float(s))
    return steps


@dataclass
class BudgetChoice:
    """The configuration chosen for a budget (sparsity; with a calibration also cache types, S and W), and the
    memory estimate that justified it."""

    sparsity: float
    kv_bytes: int
    budget: int
    uncompressed_bytes: int
    n_full: int
    n_total: int
    memory: dict[str, Any]
    type_k: str = "f16"
    type_v: str = "f16"
    sink: int | None = None  # None: the file's own (also for window)
    window: int | None = None
    mean_kl: float | None = None  # the calibration's measurement, when the choice came from one
    basis: str = "smallest sparsity that fits"

    def describe(self) -> str:
        """One line for the user."""
        parts = [f"sparsity {self.sparsity:.4g} ({self.n_full}/{self.n_total} heads full)"]
        if self.mean_kl is not None:
            parts.insert(0, f"K {self.type_k}, V {self.type_v}")
            parts.append(f"S{self.sink}/W{self.window}")
        line = f"--kv-budget {format_mib(self.budget)}: " + ", ".join(parts)
        line += f", KV cache {format_mib(self.kv_bytes)} vs {format_mib(self.uncompressed_bytes)} uncompressed"
        if self.mean_kl is not None:
            line += f"; KL {self.mean_kl:.4g}, the {self.basis}"
        return line


def choose_sparsity(
    info: dict[str, Any],
    budget: int,
    n_ctx: int,
    *,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = DEFAULT_UBATCH,
    n_seq: int = 1,
    sink: int | None = None,
    window: int | None = None,
) -> BudgetChoice:
    """Smallest sparsity whose KV cache (docs/DESIGN.md §7) fits `budget` bytes at n_ctx; BudgetError if none.
    sink/window: the S and W the model will be loaded with, when not the file's."""
    n_layer, n_head_kv = info["n_layer"], info["n_head_kv"]
    steps = sparsity_steps(n_layer, n_head_kv) if info.get("converted") else [0.0]
    for s in steps:
        mem = kv_memory(info, s, n_ctx, type_k, type_v, n_ubatch, n_seq, sink, window)
        if mem["kv_bytes_compressed"] <= budget:
            return BudgetChoice(
                sparsity=s,
                kv_bytes=mem["kv_bytes_compressed"],
                budget=budget,
                uncompressed_bytes=mem["kv_bytes_uncompressed"],
                n_full=mem["n_full"],
                n_total=n_layer * n_head_kv,
                memory=mem,
                type_k=type_k,
                type_v=type_v,
                sink=sink,
                window=window,
            )
    smallest = kv_memory(info, steps[-1], n_ctx, type_k, type_v, n_ubatch, n_seq, sink, window)["kv_bytes_compressed"]
    if not info.get("converted"):
        raise BudgetError(
            f"KV cache needs {format_mib(smallest)} at --ctx {n_ctx}, "
            f"over the budget of {format_mib(budget)}, "
            "and the model has no rlkv metadata to compress it (run `rlkv-edge convert` first)"
        )
    raise BudgetError(
        f"no sparsity fits {format_mib(budget)} at --ctx {n_ctx}: even s=1 needs {format_mib(smallest)} "
        "(lower --ctx, quantize the cache with --cache-type-k/--cache-type-v, or raise the budget)"
    )

"""KV-cache budgets: parse sizes like "64MiB" and pick the smallest sparsity whose cache fits.

The byte count is DESIGN.md §7's formula as implemented once in `rlkv_edge.convert.inspect.kv_memory`
(bytes_per_cell_head · (Σ_l F_l · n_ctx + Σ_l (H − F_l) · ring_cells)); this module only searches it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlkv_edge.masks import n_full_heads

_UNITS = {
    "": 1,
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


class BudgetError(ValueError):
    """A KV budget that cannot be parsed or met; the message is one line."""


def parse_size(text: str) -> int:
    """Bytes in a size such as "64MiB", "1.5 GiB", "500MB" or "1048576" (K/M/G are powers of 1000)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise BudgetError(f"cannot parse size '{text}' (examples: 64MiB, 1.5GiB, 500MB)")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise BudgetError(f"size must be positive, got '{text}'")
    return int(value)


def format_mib(n_bytes: float) -> str:
    """Bytes as MiB with two decimals."""
    return f"{n_bytes / 2**20:.2f} MiB"


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
    """The sparsity chosen for a budget, and the memory estimate that justified it."""

    sparsity: float
    kv_bytes: int
    budget: int
    uncompressed_bytes: int
    n_full: int
    n_total: int
    memory: dict[str, Any]

    def describe(self) -> str:
        """One line for the user."""
        return (
            f"--kv-budget {format_mib(self.budget)}: sparsity {self.sparsity:.4g} "
            f"({self.n_full}/{self.n_total} heads full), KV cache {format_mib(self.kv_bytes)} "
            f"vs {format_mib(self.uncompressed_bytes)} uncompressed"
        )


def choose_sparsity(
    path: str | os.PathLike[str],
    budget: int,
    n_ctx: int,
    *,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = 512,
) -> BudgetChoice:
    """Smallest sparsity whose KV cache (DESIGN.md §7) fits `budget` bytes at n_ctx; BudgetError if none."""
    from rlkv_edge.convert.inspect import kv_memory, read_rlkv_info

    info = read_rlkv_info(path)
    n_layer, n_head_kv = info["n_layer"], info["n_head_kv"]
    steps = sparsity_steps(n_layer, n_head_kv) if info.get("converted") else [0.0]
    for s in steps:
        mem = kv_memory(info, s, n_ctx, type_k, type_v, n_ubatch)
        if mem["kv_bytes_compressed"] <= budget:
            return BudgetChoice(
                sparsity=s,
                kv_bytes=mem["kv_bytes_compressed"],
                budget=budget,
                uncompressed_bytes=mem["kv_bytes_uncompressed"],
                n_full=mem["n_full"],
                n_total=n_layer * n_head_kv,
                memory=mem,
            )
    smallest = kv_memory(info, steps[-1], n_ctx, type_k, type_v, n_ubatch)["kv_bytes_compressed"]
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

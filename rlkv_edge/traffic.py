"""Bytes a decoded token reads (docs/DESIGN.md §7): the model's weights plus the KV cells each head can see.

At depth d, decoding one token reads every weight matrix once (token_embd only for its one row, unless the
output projection is tied to it) and, per layer, K and V rows of the cells each KV head attends to:

    full head : d + 1 cells                (every earlier position and itself)
    local head: min(S + W, d + 1) cells    (the sinks and the window)

plus the f16 attention mask of each cache (n_kv cells per layer). llama.cpp's CPU flash attention skips
masked cells without loading their K/V rows, so a local head's unused ring cells cost only their mask entry.
When decode is limited by memory bandwidth, tokens/s scales with the inverse of these bytes; `predicted_ratio`
is that inverse ratio against a baseline, which `rlkv-edge bench` prints next to the measured one.

Each row counts once. rlkv's grouped decode path (native/rlkv/rlkv-decode.h) reads it once; ggml's CPU flash
attention, which stock files and quantized caches use, reads it once per query head of its GQA group, from
memory once a head's cells outgrow the cache (bench/gqa_decode.py), so those are slower than their bytes say.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlkv_edge.memory import CELL_PAD, type_size

MASK_BYTES = 2  # f16 mask entry per cell


def weight_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the GGUF's tensors that one decoded token reads (token_embd only when it is also the output)."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(path).tensors}
    tied = "output.weight" not in tensors
    return sum(n for name, n in tensors.items() if name != "token_embd.weight" or tied)


@dataclass(frozen=True)
class DecodeShape:
    """What decode traffic depends on: weights, attention shape, heads kept full, ring, cache types."""

    weight_bytes: int
    n_layer: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_full: int  # full KV heads over all layers (n_layer * n_head_kv without compression)
    sink: int = 0
    window: int = 0
    ring_cells: int = 0  # cells of the local ring (0: no local cache)
    type_k: str = "f16"
    type_v: str = "f16"

    def kv_bytes(self, depth: int) -> float:
        """K/V bytes read by one token decoded at position `depth` (cells it sees, plus the masks)."""
        row = self.head_dim_k * type_size(self.type_k) + self.head_dim_v * type_size(self.type_v)
        n_local = self.n_layer * self.n_head_kv - self.n_full
        seen = depth + 1
        kv = row * (self.n_full * seen + n_local * min(self.sink + self.window, seen))
        n_kv_full = -(-seen // CELL_PAD) * CELL_PAD
        masks = MASK_BYTES * self.n_layer * (n_kv_full * (self.n_full > 0) + self.ring_cells * (n_local > 0))
        return kv + masks

    def bytes_per_token(self, depth: int) -> float:
        """Weights + K/V + masks read by one token decoded at position `depth`."""
        return self.weight_bytes + self.kv_bytes(depth)


def predicted_ratio(shape: DecodeShape, base: DecodeShape, depth: int) -> float:
    """Decode speed of `shape` over `base` at `depth` if both were limited by memory traffic alone."""
    return base.bytes_per_token(depth) / shape.bytes_per_token(depth)

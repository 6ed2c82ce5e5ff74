"""Re-ordering KV heads inside GGUF tensors (docs/DESIGN.md §3), in numpy, exactly.

Arrays are as gguf-py exposes them: the ggml ``ne`` order reversed, so axis 0 holds output features
(ggml rows; ``ne[1]``) and the last axis runs along a row; quantized tensors are uint8 arrays whose last
axis is the row's bytes. Moving whole rows is a byte move for every type; moving columns of a quantized
tensor is a byte move only when the moved blocks are whole quant blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gq

from rlkv_edge.errors import ConvertError
from rlkv_edge.metadata import ModelInfo

from . import ggml_quants

_BLK = re.compile(r"^blk\.(\d+)\.(attn_[a-z_]+)\.(weight|bias)$")
_UNQUANTIZED = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.F64,
    GGMLQuantizationType.I8,
    GGMLQuantizationType.I16,
    GGMLQuantizationType.I32,
    GGMLQuantizationType.I64,
}
# attention tensors that do not depend on the order of heads (per-layer norms; per-head-dim q/k norms)
_HEAD_AGNOSTIC = {"attn_norm", "attn_norm_2", "attn_post_norm", "attn_q_norm", "attn_k_norm"}

Kind = Literal["rows", "cols", "qkv"]


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor's data is re-ordered: which layer, along which axis, in blocks of how many."""

    layer: int
    kind: Kind
    block: int  # rows (kind rows) or columns (kind cols) per KV head; for qkv the K block
    q_block: int = 0  # qkv only: rows of q per KV head
    v_block: int = 0  # qkv only: rows of v per KV head


def head_order(scores: np.ndarray) -> np.ndarray:
    """Per layer, KV head indices sorted by score descending; ties keep the original order."""
    scores = np.asarray(scores, dtype=np.float32)
    return np.argsort(-scores, axis=1, kind="stable").astype(np.int64)


def plan_tensor(name: str, ne: tuple[int, ...], info: ModelInfo) -> TensorPlan | None:
    """The re-ordering plan for a tensor, or None when it does not depend on head order."""
    m = _BLK.match(name)
    if m is None:
        return None
    layer, base, suffix = int(m.group(1)), m.group(2), m.group(3)
    g, hkv = info.group_size, info.n_head_kv
    dk, dv = info.head_dim_k, info.head_dim_v
    if base in _HEAD_AGNOSTIC:
        if base in ("attn_q_norm", "attn_k_norm") and ne[0] != dk:
            raise ConvertError(f"{name}: per-head norm of size {ne[0]} (not head_dim {dk}) is not supported")
        return None
    if base == "attn_output":
        if suffix == "bias":
            return None
        return _checked(name, ne, TensorPlan(layer, "cols", g * dv), axis_len=ne[0], n_blocks=hkv)
    if base == "attn_q":
        return _checked(name, ne, TensorPlan(layer, "rows", g * dk), axis_len=_rows(ne), n_blocks=hkv)
    if base == "attn_k":
        return _checked(name, ne, TensorPlan(layer, "rows", dk), axis_len=_rows(ne), n_blocks=hkv)
    if base == "attn_v":
        return _checked(name, ne, TensorPlan(layer, "rows", dv), axis_len=_rows(ne), n_blocks=hkv)
    if base == "attn_qkv":
        plan = TensorPlan(layer, "qkv", dk, q_block=g * dk, v_block=dv)
        if _rows(ne) != hkv * (g * dk + dk + dv):
            raise ConvertError(f"{name}: fused qkv has {_rows(ne)} rows, expected {hkv * (g * dk + dk + dv)}")
        return plan
    raise ConvertError(f"{name}: unknown attention tensor, cannot tell whether it depends on head order")


def _rows(ne: tuple[int, ...]) -> int:
    """Number of output features: ne[1] for a matrix, ne[0] for a bias vector."""
    return ne[1] if len(ne) >= 2 else ne[0]


def _checked(name: str, ne: tuple[int, ...], plan: TensorPlan, axis_len: int, n_blocks: int) -> TensorPlan:
    """Check that the permuted axis is exactly n_blocks × plan.block long."""
    if len(ne) > 2 and any(d != 1 for d in ne[2:]):
        raise ConvertError(f"{name}: {len(ne)}-D attention tensor {list(ne)} is not supported")
    if axis_len != n_blocks * plan.block:
        raise ConvertError(
            f"{name}: shape {list(ne)} does not match {n_blocks} KV heads x {plan.block} (check head counts)"
        )
    return plan


def permute_rows(data: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Move blocks of axis 0 (ggml rows): block j of the result is block perm[j] of data."""
    n = len(perm)
    if data.shape[0] % n:
        raise ConvertError(f"axis of length {data.shape[0]} is not divisible into {n} heads")
    return np.ascontiguousarray(data.reshape(n, -1)[perm].reshape(data.shape))


def permute_cols(data: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Move blocks of the last axis (within each ggml row): block j of the result is block perm[j]."""
    n = len(perm)
    rows = data.reshape(-1, data.shape[-1])
    if rows.shape[1] % n:
        raise ConvertError(f"row of {rows.shape[1]} elements/bytes is not divisible into {n} heads")
    return np.ascontiguousarray(rows.reshape(rows.shape[0], n, -1)[:, perm].reshape(data.shape))


def permute_qkv(data: np.ndarray, perm: np.ndarray, plan: TensorPlan) -> np.ndarray:
    """Fused [q; k; v] rows: permute each segment in its own block size."""
    n = len(perm)
    per_row = int(np.prod(data.shape[1:])) if data.ndim > 1 else 1
    flat = data.reshape(data.shape[0], per_row)
    q_end = n * plan.q_block
    k_end = q_end + n * plan.block
    parts = [
        permute_rows(flat[:q_end], perm),
        permute_rows(flat[q_end:k_end], perm),
        permute_rows(flat[k_end:], perm),
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=0).reshape(data.shape))


def cols_are_byte_moves(qtype: GGMLQuantizationType, block_cols: int) -> bool:
    """Whether moving blocks of block_cols columns is a pure byte move for this type."""
    if qtype in _UNQUANTIZED:
        return True
    return block_cols % GGML_QUANT_SIZES[qtype][0] == 0


def reencode_type(qtype: GGMLQuantizationType, block_cols: int, row_len: int) -> GGMLQuantizationType:
    """Type to re-encode a column-permuted tensor to: Q8_0 when its 32-blocks fit, else F16."""
    q8_block = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0]
    if qtype != GGMLQuantizationType.Q8_0 and block_cols % q8_block == 0 and row_len % q8_block == 0:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.F16


def permute_tensor(data: np.ndarray, qtype: GGMLQuantizationType, plan: TensorPlan, perm: np.ndarray) -> np.ndarray:
    """Apply a plan whose moves are byte moves (caller checks cols_are_byte_moves for kind cols)."""
    if plan.kind == "rows":
        return permute_rows(data, perm)
    if plan.kind == "qkv":
        return permute_qkv(data, perm, plan)
    return permute_cols(data, perm)


def reencode_cols(
    data: np.ndarray, qtype: GGMLQuantizationType, new_type: GGMLQuantizationType, perm: np.ndarray
) -> np.ndarray:
    """Dequantize, permute column blocks, quantize to new_type (for column moves that split quant blocks)."""
    try:
        values = gq.dequantize(data, qtype)
    except NotImplementedError:
        raise ConvertError(f"cannot dequantize {qtype.name} in numpy to re-order its columns") from None
    values = permute_cols(np.asarray(values, dtype=np.float32), perm)
    if new_type == GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return ggml_quants.quantize(values, new_type)

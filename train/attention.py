"""Gated mixed attention (docs/DESIGN.md §2, §5): out = α·full + (1 − α)·local per KV head, before o_proj.

A local head answering the query with token ordinal p sees the keys with ordinal k ≤ p and
(k < S or p − W < k). Ordinals count the non-pad tokens before a position (per row), so they come from
the attention mask and never from position_ids. The function is registered with transformers'
``AttentionInterface`` and ``AttentionMaskInterface`` under the name ``"rlkv"``; the gate, S and W live
on each attention module (``rlkv_gate``, ``rlkv_sink``, ``rlkv_window``).
"""

from __future__ import annotations

import os
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "rlkv"
BACKENDS = ("auto", "reference", "triton")


def causal_mask(q_len: int, kv_len: int, device: torch.device | str) -> torch.Tensor:
    """Boolean [1, 1, q_len, kv_len] causal mask with the queries as the last q_len keys."""
    q_idx = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    k_idx = torch.arange(kv_len, device=device)[None, :]
    return (k_idx <= q_idx)[None, None]


def local_mask(full: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Sink + window mask from a boolean visibility mask [..., Tq, Tk] (True = the query sees the key)."""
    ordinal = full.cumsum(-1) - 1  # ordinal of each visible key among the keys this row sees
    p = ordinal[..., -1:]  # the query's own ordinal: it sees every non-pad key up to itself
    return full & ((ordinal < sink) | (ordinal > p - window))


def ordinals_from_mask(full: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ordinals from a [B, 1, Tq, Tk] mask: query ordinals [B, Tq], key ordinals [B, Tk] (−1 = pad)."""
    q_pos = full[:, 0].sum(-1) - 1
    valid = full[:, 0, -1]  # the last query row sees every non-pad key (keys after it are never visible)
    k_pos = torch.where(valid, valid.cumsum(-1) - 1, -1)
    return q_pos.to(torch.int32).contiguous(), k_pos.to(torch.int32).contiguous()


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Masked SDPA that returns zeros (not NaN) for query rows that see no key."""
    has_key = mask.any(-1, keepdim=True)
    first = torch.zeros_like(mask)
    first[..., 0] = True
    safe = mask | (~has_key & first)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, scale=scale)
    return out * has_key.to(out.dtype)


def reference_mixed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    full: torch.Tensor,
    sink: int,
    window: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Two-SDPA mixed attention. q [B,Hq,Tq,D], k/v [B,Hkv,Tk,D], alpha [Hkv], full bool [B|1,1,Tq,Tk]."""
    n_rep = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = k.repeat_interleave(n_rep, dim=1)
    v = v.repeat_interleave(n_rep, dim=1)
    out_full = _sdpa(q, k, v, full, scale)
    out_local = _sdpa(q, k, v, local_mask(full, sink, window), scale)
    a = alpha.to(q.dtype).repeat_interleave(n_rep)[None, :, None, None]
    return a * out_full + (1 - a) * out_local


def naive_mixed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    sink: int,
    window: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Independent float64 O(T²) reference from ordinals (q_pos [B,Tq], k_pos [B,Tk], −1 = pad)."""
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    n_rep = q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = k.repeat_interleave(n_rep, dim=1)
    v = v.repeat_interleave(n_rep, dim=1)
    qp = q_pos[:, None, :, None].long()
    kp = k_pos[:, None, None, :].long()
    full = (kp >= 0) & (kp <= qp)
    loc = full & ((kp < sink) | (kp > qp - window))
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale

    def attend(mask: torch.Tensor) -> torch.Tensor:
        s = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=-1).nan_to_num(0.0)
        return torch.einsum("bhqk,bhkd->bhqd", w, v)

    a = alpha.double().repeat_interleave(n_rep)[None, :, None, None]
    return (a * attend(full) + (1 - a) * attend(loc)).to(dtype)


def _as_bool_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """The visibility mask the model passed (bool, or additive float), or a causal one when it passed none."""
    if attention_mask is None:
        return causal_mask(q_len, kv_len, device)
    if attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0  # additive masks: 0 where visible, a large negative elsewhere
    return attention_mask[..., :kv_len]


def _use_triton(module: torch.nn.Module, q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the fused kernel handles this call (backend setting, device, shape)."""
    backend = getattr(module, "rlkv_backend", "auto")
    if backend == "reference":
        return False
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if backend == "auto" and not (q.is_cuda and q.shape[2] > 1):
        return False
    if backend == "triton" and not (q.is_cuda or interpret):
        raise RuntimeError("the triton backend needs a CUDA device (or TRITON_INTERPRET=1)")
    from rlkv_edge.train.triton_kernel import triton_available

    if not triton_available():
        if backend == "triton":
            raise RuntimeError("the triton backend was requested but triton is not installed")
        return False
    return q.shape[2] <= k.shape[2]


def rlkv_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: gated mix of full and sink+window attention -> [B, Tq, Hq, D]."""
    gate = getattr(module, "rlkv_gate", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    full = _as_bool_mask(attention_mask, q_len, kv_len, query.device)
    if gate is None:  # a module without a gate (e.g. a vision tower): plain attention
        n_rep = query.shape[1] // key.shape[1]
        out = _sdpa(query, key.repeat_interleave(n_rep, 1), value.repeat_interleave(n_rep, 1), full, scaling)
        return out.transpose(1, 2).contiguous(), None
    sink, window = int(cast(Any, module).rlkv_sink), int(cast(Any, module).rlkv_window)
    if _use_triton(module, query, key):
        from rlkv_edge.train.triton_kernel import fused_mixed_attention

        if full.shape[0] != query.shape[0]:
            full = full.expand(query.shape[0], -1, -1, -1)
        q_pos, k_pos = ordinals_from_mask(full)
        out = fused_mixed_attention(query, key, value, gate, q_pos, k_pos, sink, window, scaling)
    else:
        out = reference_mixed_attention(query, key, value, gate, full, sink, window, scaling)
    return out.transpose(1, 2).contiguous(), None


def rlkv_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """Mask function for ``rlkv``: SDPA's boolean [B, 1, Tq, Tk] mask, always materialised."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register ``rlkv`` with transformers' attention and attention-mask interfaces (idempotent)."""
    AttentionInterface.register(ATTN_NAME, rlkv_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, rlkv_mask)


register()

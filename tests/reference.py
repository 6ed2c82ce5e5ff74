"""The one numpy reference model: a float64 forward of a tiny llama GGUF (tests/gguf_fixtures.py) with the
local-attention rule of docs/DESIGN.md §2, and the grouped-query attention it is built on.

`RefModel(model)` runs on exactly the float32 weights `write_tiny_gguf` wrote (TinyModel.weights), so the
runtime's logits can be compared with it; `attention` is also what the convert tests use to check that
re-ordering heads leaves an attention layer's output unchanged.
"""

from __future__ import annotations

import numpy as np
from gguf_fixtures import TinyModel


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    """RMS norm over the last axis, times the gain g."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope_norm(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """llama.cpp LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (2i, 2i+1) by pos * base^(-2i/d).

    x: [T, heads, d]; pos: [T].
    """
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, d/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Grouped-query attention, one query head at a time: q [T, n_head, d], k and v [N, n_head_kv, d],
    visible [n_head_kv, T, N] (which keys each KV head's queries see). Returns [T, n_head, d]."""
    n_tok, n_head, d = q.shape
    g = n_head // k.shape[1]
    out = np.zeros((n_tok, n_head, v.shape[-1]))
    for hq in range(n_head):
        hk = hq // g
        sc = (q[:, hq, :] @ k[:, hk, :].T) / np.sqrt(d)
        sc = np.where(visible[hk], sc, -np.inf)
        sc = sc - sc.max(axis=1, keepdims=True)
        pr = np.exp(sc)
        pr /= pr.sum(axis=1, keepdims=True)
        out[:, hq, :] = pr @ v[:, hk, :]
    return out


class RefModel:
    """float64 forward of a tiny llama with an explicit per-layer KV store, so that rollback, removal and shifts
    can be mirrored.

    Local heads (KV head index >= F_l) answer the query at position p from the stored keys at positions k <= p
    with k < S or p - W < k; full heads see every stored k <= p. n_full: F_l per layer (default: all full).
    """

    def __init__(self, model: TinyModel, n_full: list[int] | None = None, sink: int = 0, window: int = 0) -> None:
        if model.arch != "llama":
            raise ValueError(f"the reference is a llama forward (NORM rope, no biases), not {model.arch}")
        self.m = model
        self.w = model.weights
        self.n_full = list(n_full) if n_full is not None else [model.n_head_kv] * model.n_layer
        self.S, self.W = sink, window
        self.reset()

    def reset(self) -> None:
        """Empty the KV store."""
        m = self.m
        self.K = [np.zeros((0, m.n_head_kv, m.head_dim)) for _ in range(m.n_layer)]  # pre-rope K
        self.V = [np.zeros((0, m.n_head_kv, m.head_dim)) for _ in range(m.n_layer)]
        self.P = np.zeros(0, dtype=np.int64)
        # where each stored key is rotated, minus its position (None: at its position). Only to mirror upstream's
        # seq_div, whose K-shift rotates a key to 2·old - new instead of new (llama_kv_cells::pos_div's sign)
        self.rot_offset: np.ndarray | None = None

    def truncate(self, n: int) -> None:
        """Drop the stored positions >= n."""
        keep = n > self.P
        self.K = [k[keep] for k in self.K]
        self.V = [v[keep] for v in self.V]
        self.P = self.P[keep]

    def forward(self, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """tokens, pos: the new tokens (appended to the store); returns logits [T, n_vocab]."""
        w, m = self.w, self.m
        T = len(tokens)
        pos = np.asarray(pos, dtype=np.int64)
        x = w["token_embd.weight"].astype(np.float64)[np.asarray(tokens)]
        H, NH, D = m.n_head_kv, m.n_head, m.head_dim
        P_all = np.concatenate([self.P, pos])
        off = self.rot_offset if self.rot_offset is not None else np.zeros(len(self.P), dtype=np.int64)
        R_all = P_all + np.concatenate([off, np.zeros(T, dtype=np.int64)])
        causal = P_all[None, :] <= pos[:, None]
        local = causal & ((P_all[None, :] < self.S) | (pos[:, None] - self.W < P_all[None, :]))
        for il in range(m.n_layer):
            p = f"blk.{il}."
            h = rms_norm(x, w[p + "attn_norm.weight"], m.norm_eps)
            q = (h @ w[p + "attn_q.weight"].astype(np.float64).T).reshape(T, NH, D)
            k = (h @ w[p + "attn_k.weight"].astype(np.float64).T).reshape(T, H, D)
            v = (h @ w[p + "attn_v.weight"].astype(np.float64).T).reshape(T, H, D)
            self.K[il] = np.concatenate([self.K[il], k])
            self.V[il] = np.concatenate([self.V[il], v])
            qr = rope_norm(q, pos, m.rope_base)
            kr = rope_norm(self.K[il], R_all, m.rope_base)
            visible = np.stack([causal if hk < self.n_full[il] else local for hk in range(H)])
            out = attention(qr, kr, self.V[il], visible)
            x = x + out.reshape(T, NH * D) @ w[p + "attn_output.weight"].astype(np.float64).T
            h = rms_norm(x, w[p + "ffn_norm.weight"], m.norm_eps)
            gt = h @ w[p + "ffn_gate.weight"].astype(np.float64).T
            up = h @ w[p + "ffn_up.weight"].astype(np.float64).T
            x = x + ((gt / (1.0 + np.exp(-gt))) * up) @ w[p + "ffn_down.weight"].astype(np.float64).T
        self.P = P_all
        if self.rot_offset is not None:
            self.rot_offset = R_all - P_all
        h = rms_norm(x, w["output_norm.weight"], m.norm_eps)
        return h @ w["output.weight"].astype(np.float64).T

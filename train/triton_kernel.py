"""Fused gated mixed attention in Triton: full and sink+window softmax share every QK tile.

Forward (one pass over K tiles per Q tile): s = q·kᵀ·scale is computed once and fed to two online
softmaxes, the full one (keys with ordinal ≤ p) and the local one (additionally k < S or p − W < k);
out = α·O_full + (1 − α)·O_local. Backward recomputes each tile once for both softmaxes:

    P_f = exp(s − lse_f)·full,  P_l = exp(s − lse_l)·local,  dP = dO·vᵀ
    dV += (α·P_f + (1 − α)·P_l)ᵀ·dO
    dS  = α·P_f·(dP − δ_f) + (1 − α)·P_l·(dP − δ_l),  δ_x = rowsum(dO ∘ O_x)
    dK += dSᵀ·q·scale,  dQ += dS·k·scale,  dα = Σ (δ_f − δ_l)

dK/dV are accumulated by one program per K tile (looping over the query tiles and the query heads of its
GQA group), dQ by one program per Q tile, so no atomics are needed. Token ordinals come in as q_pos
[B, Tq] and k_pos [B, Tk] (−1 = padding), exactly as the reference derives them from the mask.
Tiles whose keys no query of the tile can see locally (between the sinks and the window) skip the local
softmax in the forward and the backward. On a GPU the tile sizes, warps and pipeline stages are autotuned per
head size and power-of-two length bucket when asked (`tuned=True`); the default is the fixed 64 × 64 tiles.
Set TRITON_INTERPRET=1 before importing this module to run it on a CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl

    _HAVE_TRITON = True
except ImportError:  # pragma: no cover - laptops without triton
    _HAVE_TRITON = False


def triton_available() -> bool:
    """Whether triton can be imported."""
    return _HAVE_TRITON


def _interpreting() -> bool:
    """Whether triton runs in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if _HAVE_TRITON:

    @triton.jit
    def _masks(q_pos, k_pos, SINK, WINDOW):
        """Full and local visibility of a [M, N] tile from the ordinals."""
        full = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
        near = (k_pos[None, :] < SINK) | (k_pos[None, :] > q_pos[:, None] - WINDOW)
        return full, full & near

    @triton.jit
    def _maybe_local(q_pos, k_pos, SINK, WINDOW):
        """Whether some key of the tile may be local to some query of it (a superset test on the ordinals)."""
        k_min = tl.min(tl.where(k_pos >= 0, k_pos, 2147483647), 0)
        q_min = tl.min(tl.where(q_pos >= 0, q_pos, 2147483647), 0)
        return (k_min < SINK) | (tl.max(k_pos, 0) > q_min - WINDOW)

    @triton.jit
    def _fwd_kernel(
        Q, K, V, A, QPOS, KPOS, OUT, OF, OL, LSEF, LSEL,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
        H, G, Tq, Tk, scale, SINK, WINDOW, T_BUCKET,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < Tq
        d_ok = offs_d < D

        q = tl.load(
            Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :],
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        q_pos = tl.load(QPOS + b * Tq + offs_m, mask=m_ok, other=-1)
        alpha = tl.load(A + hk).to(tl.float32)

        m_f = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_f = tl.zeros([BLOCK_M], tl.float32)
        acc_f = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        m_l = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_l = tl.zeros([BLOCK_M], tl.float32)
        acc_l = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

        # queries are the last Tq keys: nothing after key index (m_end - 1 + Tk - Tq) is visible
        hi = tl.minimum(Tk, (pid_m + 1) * BLOCK_M + Tk - Tq)
        k_base = K + b * skb + hk * skh
        v_base = V + b * svb + hk * svh
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            n_ok = cols < Tk
            k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            k_pos = tl.load(KPOS + b * Tk + cols, mask=n_ok, other=-1)
            full, local = _masks(q_pos, k_pos, SINK, WINDOW)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale  # the shared QK tile

            s_f = tl.where(full, s, float("-inf"))
            m_new = tl.maximum(m_f, tl.max(s_f, 1))
            p = tl.exp(s_f - m_new[:, None])
            corr = tl.exp(m_f - m_new)
            l_f = l_f * corr + tl.sum(p, 1)
            acc_f = acc_f * corr[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_f = m_new

            if _maybe_local(q_pos, k_pos, SINK, WINDOW):  # tiles between sinks and window skip the local update
                s_l = tl.where(local, s, float("-inf"))
                m_new = tl.maximum(m_l, tl.max(s_l, 1))
                p = tl.exp(s_l - m_new[:, None])
                corr = tl.exp(m_l - m_new)
                l_l = l_l * corr + tl.sum(p, 1)
                acc_l = acc_l * corr[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
                m_l = m_new

        o_f = acc_f / tl.maximum(l_f, 1.0e-30)[:, None]
        o_l = acc_l / tl.maximum(l_l, 1.0e-30)[:, None]
        o = alpha * o_f + (1.0 - alpha) * o_l
        o_off = b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :]
        o_mask = m_ok[:, None] & d_ok[None, :]
        tl.store(OUT + o_off, o.to(OUT.dtype.element_ty), mask=o_mask)
        tl.store(OF + o_off, o_f.to(OF.dtype.element_ty), mask=o_mask)
        tl.store(OL + o_off, o_l.to(OL.dtype.element_ty), mask=o_mask)
        row = pid_bh * Tq + offs_m
        tl.store(LSEF + row, tl.where(l_f > 0, m_f + tl.log(tl.maximum(l_f, 1.0e-30)), 0.0), mask=m_ok)
        tl.store(LSEL + row, tl.where(l_l > 0, m_l + tl.log(tl.maximum(l_l, 1.0e-30)), 0.0), mask=m_ok)

    @triton.jit
    def _tile_grads(q, k, v, do, q_pos, k_pos, lse_f, lse_l, dlt_f, dlt_l, alpha, scale, SINK, WINDOW, PREC):
        """Recompute one tile for both softmaxes: the mixed probabilities and dS."""
        full, local = _masks(q_pos, k_pos, SINK, WINDOW)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale
        p_f = tl.where(full, tl.exp(s - lse_f[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        p = alpha * p_f
        ds = alpha * p_f * (dp - dlt_f[:, None])
        if _maybe_local(q_pos, k_pos, SINK, WINDOW):  # tiles between sinks and window have no local part
            p_l = tl.where(local, tl.exp(s - lse_l[:, None]), 0.0)
            p += (1.0 - alpha) * p_l
            ds += (1.0 - alpha) * p_l * (dp - dlt_l[:, None])
        return p, ds

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, A, QPOS, KPOS, DO, LSEF, LSEL, DLTF, DLTL, DK, DV,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sdkb, sdkh, sdkt,
        H, HK, G, Tq, Tk, scale, SINK, WINDOW, T_BUCKET,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // HK
        hk = pid_bh % HK
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        n_ok = offs_n < Tk
        d_ok = offs_d < D
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        k_pos = tl.load(KPOS + b * Tk + offs_n, mask=n_ok, other=-1)
        alpha = tl.load(A + hk).to(tl.float32)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        # the first query that can see this K tile (queries are the last Tq keys)
        lo = tl.maximum(pid_n * BLOCK_N - (Tk - Tq), 0) // BLOCK_M * BLOCK_M
        for g in range(0, G):
            h = hk * G + g
            for start_m in range(lo, Tq, BLOCK_M):
                offs_m = start_m + offs_m0
                m_ok = offs_m < Tq
                q_mask = m_ok[:, None] & d_ok[None, :]
                q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
                do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], mask=q_mask, other=0.0)
                q_pos = tl.load(QPOS + b * Tq + offs_m, mask=m_ok, other=-1)
                row = (b * H + h) * Tq + offs_m
                lse_f = tl.load(LSEF + row, mask=m_ok, other=0.0)
                lse_l = tl.load(LSEL + row, mask=m_ok, other=0.0)
                dlt_f = tl.load(DLTF + row, mask=m_ok, other=0.0)
                dlt_l = tl.load(DLTL + row, mask=m_ok, other=0.0)
                p, ds = _tile_grads(
                    q, k, v, do, q_pos, k_pos, lse_f, lse_l, dlt_f, dlt_l, alpha, scale, SINK, WINDOW, PREC
                )
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
        out = b * sdkb + hk * sdkh + offs_n[:, None] * sdkt + offs_d[None, :]
        tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, A, QPOS, KPOS, DO, LSEF, LSEL, DLTF, DLTL, DQ,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, sdqb, sdqh, sdqt,
        H, G, Tq, Tk, scale, SINK, WINDOW, T_BUCKET,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        hk = h // G
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < Tq
        d_ok = offs_d < D
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :], mask=q_mask, other=0.0)
        q_pos = tl.load(QPOS + b * Tq + offs_m, mask=m_ok, other=-1)
        row = pid_bh * Tq + offs_m
        lse_f = tl.load(LSEF + row, mask=m_ok, other=0.0)
        lse_l = tl.load(LSEL + row, mask=m_ok, other=0.0)
        dlt_f = tl.load(DLTF + row, mask=m_ok, other=0.0)
        dlt_l = tl.load(DLTL + row, mask=m_ok, other=0.0)
        alpha = tl.load(A + hk).to(tl.float32)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        hi = tl.minimum(Tk, (pid_m + 1) * BLOCK_M + Tk - Tq)
        for start_n in range(0, hi, BLOCK_N):
            offs_n = start_n + offs_n0
            n_ok = offs_n < Tk
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
            k_pos = tl.load(KPOS + b * Tk + offs_n, mask=n_ok, other=-1)
            _, ds = _tile_grads(q, k, v, do, q_pos, k_pos, lse_f, lse_l, dlt_f, dlt_l, alpha, scale, SINK, WINDOW, PREC)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        out = b * sdqb + h * sdqh + offs_m[:, None] * sdqt + offs_d[None, :]
        tl.store(DQ + out, (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) the autotuner tries on a GPU; the first is the fixed default.
# dK/dV leaves out 32 x 64 tiles: on an H200 (Triton 3.6) they gave dK 3-6% off the float64 reference at D = 128,
# with any number of stages, while dV was right (tests/train/test_train_triton.py checks every config on a GPU).
_FWD_CONFIGS = [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2)]
_DKDV_CONFIGS = [(64, 64, 4, 3), (32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 4), (128, 64, 8, 3)]
_DQ_CONFIGS = [(64, 64, 4, 3), (128, 32, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4), (128, 128, 8, 2)]

if _HAVE_TRITON:

    def _autotuned(kernel: Any, configs: list[tuple[int, int, int, int]]) -> Any:
        """kernel autotuned over configs, keyed on the head size, the precision and the length bucket."""
        return triton.autotune(
            [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in configs],
            key=["D", "T_BUCKET", "PREC"],
        )(kernel)

    _fwd_tuned = _autotuned(_fwd_kernel, _FWD_CONFIGS)
    _bwd_dkdv_tuned = _autotuned(_bwd_dkdv_kernel, _DKDV_CONFIGS)
    _bwd_dq_tuned = _autotuned(_bwd_dq_kernel, _DQ_CONFIGS)


def _launch(
    kernels: tuple[Any, Any], tuned: bool, tiles_of: tuple[str, int], heads: int, *args: Any, **meta: Any
) -> None:
    """Run kernels[1] autotuned (tuned, on a GPU) or kernels[0] with fixed tiles, on a grid of one program per
    tile of tiles_of = ("BLOCK_M" or "BLOCK_N", length) × heads. args and meta go to the kernel."""
    axis, length = tiles_of
    bucket = triton.next_power_of_2(max(length, 16))  # the autotune key: one tuning per power-of-two length
    if tuned and not _interpreting():
        kernels[1][lambda cfg: (triton.cdiv(length, cfg[axis]), heads)](*args, bucket, **meta)
        return
    block = 16 if _interpreting() else (64 if meta["BLOCK_D"] <= 128 else 32)
    kernels[0][(triton.cdiv(length, block), heads)](*args, bucket, BLOCK_M=block, BLOCK_N=block, **meta)


def _block_d(d: int) -> int:
    """The head size padded to a power of two of at least 16 (tl.dot's smallest)."""
    return max(16, triton.next_power_of_2(d))


def _precision(q: torch.Tensor) -> str:
    """tl.dot's input precision: exact float32 products for float32 inputs (Triton's default there is TF32,
    ~1e-3 relative error on a GPU), the tensor cores' native one for bf16 / fp16."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """Batch, head and token strides of a [B, H, T, D] tensor whose last dim is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x with a unit stride on the last dimension."""
    return x if x.stride(-1) == 1 else x.contiguous()


class FusedMixedAttention(torch.autograd.Function):
    """Autograd wrapper of the fused forward and backward kernels."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        alpha: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        sink: int,
        window: int,
        scale: float,
        tuned: bool,
    ) -> torch.Tensor:
        """Run the forward kernel; saves O_full, O_local and both log-sum-exps for the backward."""
        q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
        B, H, Tq, D = q.shape
        HK, Tk = k.shape[1], k.shape[2]
        G = H // HK
        alpha_f = alpha.detach().float().contiguous()
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        o_f, o_l = torch.empty_like(o), torch.empty_like(o)
        lse_f = torch.empty(B, H, Tq, device=q.device, dtype=torch.float32)
        lse_l = torch.empty_like(lse_f)
        _launch(
            (_fwd_kernel, _fwd_tuned), tuned, ("BLOCK_M", Tq), B * H,
            q, k, v, alpha_f, q_pos, k_pos, o, o_f, o_l, lse_f, lse_l,
            *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            H, G, Tq, Tk, scale, sink, window,
            D=D, BLOCK_D=_block_d(D), PREC=_precision(q),
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, alpha_f, q_pos, k_pos, o_f, o_l, lse_f, lse_l)
        ctx.args = (sink, window, scale, alpha.dtype, tuned)
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Run the dK/dV and dQ kernels; dα is a reduction of the row deltas."""
        q, k, v, alpha_f, q_pos, k_pos, o_f, o_l, lse_f, lse_l = ctx.saved_tensors
        sink, window, scale, alpha_dtype, tuned = ctx.args
        do = do.to(q.dtype).contiguous()  # autograd may hand a float32 gradient to a bf16 output
        B, H, Tq, D = q.shape
        HK, Tk = k.shape[1], k.shape[2]
        G = H // HK
        dlt_f = (do.float() * o_f.float()).sum(-1).contiguous()
        dlt_l = (do.float() * o_l.float()).sum(-1).contiguous()
        dq = torch.empty_like(q, memory_format=torch.contiguous_format)
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
        meta = {"D": D, "BLOCK_D": _block_d(D), "PREC": _precision(q)}
        _launch(
            (_bwd_dkdv_kernel, _bwd_dkdv_tuned), tuned, ("BLOCK_N", Tk), B * HK,
            q, k, v, alpha_f, q_pos, k_pos, do, lse_f, lse_l, dlt_f, dlt_l, dk, dv,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk),
            H, HK, G, Tq, Tk, scale, sink, window, **meta,
        )  # fmt: skip
        _launch(
            (_bwd_dq_kernel, _bwd_dq_tuned), tuned, ("BLOCK_M", Tq), B * H,
            q, k, v, alpha_f, q_pos, k_pos, do, lse_f, lse_l, dlt_f, dlt_l, dq,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
            H, G, Tq, Tk, scale, sink, window, **meta,
        )  # fmt: skip
        d_alpha = (dlt_f - dlt_l).view(B, HK, G, Tq).sum(dim=(0, 2, 3)).to(alpha_dtype)
        return dq, dk, dv, d_alpha, None, None, None, None, None, None


def fused_mixed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    sink: int,
    window: int,
    scale: float | None = None,
    tuned: bool = False,
) -> torch.Tensor:
    """Fused mixed attention. q [B,Hq,Tq,D], k/v [B,Hkv,Tk,D], alpha [Hkv], q_pos [B,Tq], k_pos [B,Tk].

    tuned=True autotunes tiles, warps and stages on a GPU (the interpreter always runs fixed 16 × 16 tiles).
    Off by default: on an H200 it was 1.5-1.6x faster at 8k-16k, but its dK differed from the reference by up
    to 7% of dK's largest value, where the fixed tiles' had differed by at most 0.6% (docs/notes/gpu-backends.md)."""
    if not _HAVE_TRITON:
        raise RuntimeError("triton is not installed")
    if q.shape[2] > k.shape[2]:
        raise ValueError("the fused kernel expects the queries to be the last Tq of the Tk keys")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q_pos = q_pos.to(device=q.device, dtype=torch.int32).contiguous()
    k_pos = k_pos.to(device=q.device, dtype=torch.int32).contiguous()
    # one dtype for the three (tl.dot needs equal operands): autocast's, as it would give SDPA, else the widest.
    # Under bf16 autocast a float32 model's q / k leave RoPE in float32 while v stays bf16.
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    else:
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    out: torch.Tensor = FusedMixedAttention.apply(q, k, v, alpha, q_pos, k_pos, int(sink), int(window), scale, tuned)
    return out

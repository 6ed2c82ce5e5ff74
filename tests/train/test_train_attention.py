"""Gated mixed attention (reference path) against the model's own attention and an independent naive mask."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from tiny_models import ARCHS, positions_from_mask, tiny_model
from transformers import DynamicCache

from rlkv_edge.train.attention import (
    local_mask,
    naive_mixed_attention,
    ordinals_from_mask,
    reference_mixed_attention,
)
from rlkv_edge.train.gates import clamp_gates, get_gates, install_gates, set_gates

torch.set_num_threads(2)
SINK, WINDOW = 3, 6
T = 24


def _ids_and_masks(vocab: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch with no, left and right padding."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, :7] = 0  # left padding
    mask[2, -5:] = 0  # right padding
    return ids, mask


def _naive_local_4d(mask2d: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """Sink+window visibility built with loops from the 2-D padding mask (pad rows see themselves)."""
    b, t = mask2d.shape
    out = torch.zeros(b, 1, t, t, dtype=torch.bool)
    for r in range(b):
        ordinal = [-1] * t
        n = 0
        for i in range(t):
            if mask2d[r, i]:
                ordinal[i] = n
                n += 1
        for i in range(t):
            if not mask2d[r, i]:
                out[r, 0, i, i] = True
                continue
            p = ordinal[i]
            for j in range(i + 1):
                k = ordinal[j]
                if k >= 0 and (k < sink or p - window < k):
                    out[r, 0, i, j] = True
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_alpha_one_equals_model_attention(arch: str) -> None:
    """All gates 1: logits equal the stock SDPA model's within 1e-6 (no, left and right padding)."""
    model = tiny_model(arch)
    ids, mask = _ids_and_masks()
    pos = positions_from_mask(mask)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        install_gates(model, sink=SINK, window=WINDOW)
        assert model.config._attn_implementation == "rlkv"
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    keep = mask.bool()
    assert (out - ref)[keep].abs().max().item() <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_alpha_zero_equals_local_attention(arch: str) -> None:
    """All gates 0: logits equal the stock model given an independently built sink+window 4-D mask."""
    model = tiny_model(arch)
    ids, mask = _ids_and_masks()
    pos = positions_from_mask(mask)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=_naive_local_4d(mask, SINK, WINDOW), position_ids=pos).logits
        full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        install_gates(model, sink=SINK, window=WINDOW)
        set_gates(model, 0.0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    keep = mask.bool()
    assert (out - ref)[keep].abs().max().item() <= 1e-5
    assert (full - ref)[keep].abs().max().item() > 1e-2  # the window really changes the output


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decoding_equals_full_recompute(arch: str) -> None:
    """Prefill + token-by-token decoding with a KV cache gives the logits of a full forward (mixed gates)."""
    model = tiny_model(arch)
    install_gates(model, sink=SINK, window=WINDOW)
    set_gates(model, torch.rand(2, 2, generator=torch.Generator().manual_seed(3)).numpy())
    ids, mask = _ids_and_masks()
    ids, mask = ids[:2], mask[:2]  # no padding and left padding (right padding does not decode)
    prefill = 9
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        cache = DynamicCache(config=model.config)
        pos = positions_from_mask(mask)
        out = model(
            input_ids=ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill],
            past_key_values=cache, use_cache=True,
        ).logits  # fmt: skip
        steps = [out]
        for t in range(prefill, T):
            out = model(
                input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
                past_key_values=cache, use_cache=True,
            ).logits  # fmt: skip
            steps.append(out)
    cached = torch.cat(steps, dim=1)
    keep = mask.bool()
    assert (cached - full)[keep].abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_invariance(arch: str) -> None:
    """A sequence gives the same logits alone, left-padded and right-padded in a batch."""
    model = tiny_model(arch)
    install_gates(model, sink=SINK, window=WINDOW)
    set_gates(model, torch.rand(2, 2, generator=torch.Generator().manual_seed(4)).numpy())
    n = 17
    seq = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        alone = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0]
        pad = T - n
        ids = torch.zeros(2, T, dtype=torch.long)
        mask = torch.zeros(2, T, dtype=torch.long)
        ids[0, pad:], mask[0, pad:] = seq[0], 1  # left
        ids[1, :n], mask[1, :n] = seq[0], 1  # right
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    assert (out[0, pad:] - alone).abs().max().item() <= 1e-5
    assert (out[1, :n] - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("sink,window", [(2, 5), (0, 1), (64, 64), (1, 100)])
def test_reference_matches_naive(sink: int, window: int) -> None:
    """The two-SDPA reference equals the naive float64 reference from explicit ordinals, values and grads."""
    g = torch.Generator().manual_seed(0)
    b, h, hk, t, d = 2, 6, 2, 29, 8
    q = torch.randn(b, h, t, d, generator=g, requires_grad=True)
    k = torch.randn(b, hk, t, d, generator=g, requires_grad=True)
    v = torch.randn(b, hk, t, d, generator=g, requires_grad=True)
    a = torch.rand(hk, generator=g).requires_grad_(True)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[0, :4] = False
    valid[1, -6:] = False
    full = valid[:, None, None, :] & torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    q_pos, k_pos = ordinals_from_mask(full)
    assert torch.equal(k_pos[0, 4:], torch.arange(t - 4, dtype=torch.int32))
    ref = reference_mixed_attention(q, k, v, a, full, sink, window)
    naive = naive_mixed_attention(q, k, v, a, q_pos, k_pos, sink, window)
    assert (ref - naive).abs().max().item() <= 1e-5
    go = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * go).sum(), (q, k, v, a))
    g_naive = torch.autograd.grad((naive * go).sum(), (q, k, v, a))
    for x, y in zip(g_ref, g_naive, strict=True):
        assert (x - y).abs().max().item() <= 1e-4


def test_local_mask_rule() -> None:
    """The local rule on one causal row: k < S or p − W < k, W keys including the query's own."""
    t, s, w = 12, 2, 3
    full = torch.ones(t, t, dtype=torch.bool).tril()
    loc = local_mask(full, s, w)
    assert loc[11].nonzero().flatten().tolist() == [0, 1, 9, 10, 11]
    assert loc[3].nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_gates_install_and_clamp() -> None:
    """Gates are [H] parameters initialised to 1, the only trainable parameters; clamping keeps [0, 1]."""
    model = tiny_model("llama")
    gates = install_gates(model)
    assert [tuple(g.shape) for g in gates] == [(2,), (2,)]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "model.layers.0.self_attn.rlkv_gate",
        "model.layers.1.self_attn.rlkv_gate",
    ]
    set_gates(model, [[1.5, -0.2], [0.3, 0.7]])
    clamp_gates(model)
    assert get_gates(model).ravel().tolist() == pytest.approx([1.0, 0.0, 0.3, 0.7])


def test_gate_gradient_flows() -> None:
    """A loss on the logits gives every gate a gradient."""
    model = tiny_model("qwen2")
    install_gates(model, sink=SINK, window=WINDOW)
    ids, mask = _ids_and_masks()
    model(input_ids=ids, attention_mask=mask).logits.logsumexp(-1).mean().backward()
    for g in (m.rlkv_gate for m in model.modules() if hasattr(m, "rlkv_gate")):
        assert g.grad is not None and g.grad.abs().sum() > 0

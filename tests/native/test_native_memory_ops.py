"""Memory operations on the split KV cache, mirrored on the reference's KV store (tests/reference.py): rollback,
state save / load, context shift (issue 3, docs/DESIGN.md §4)."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from reference import RefModel
from tiny_runtime import (
    N_TOK,
    SINK,
    WINDOW,
    eval_tokens,
    load,
    random_tokens,
    rel_err,
)


def test_rollback(tiny_paths, weights):
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = random_tokens(N_TOK, seed=7)
    llm = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    eval_tokens(llm, toks[:300])
    ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW)
    ref.forward(toks[:300], np.arange(300))

    # by one token: accepted (the ring keeps a slack of n_ubatch + padding); replay gives the reference
    assert llm._ctx.kv_cache_seq_rm(0, 299, -1)
    llm.n_tokens = 299
    ref.truncate(299)
    got = eval_tokens(llm, toks[299:320])
    exp = ref.forward(toks[299:320], np.arange(299, 320))
    assert rel_err(got, exp) <= 1e-3

    # by more than the ring slack: refused, nothing removed
    assert not llm._ctx.kv_cache_seq_rm(0, 40, -1)
    assert llm._ctx.kv_cache_seq_rm(0, 320, -1)  # no-op removal is fine

    # a following llama-cpp-python generation is still correct: generate() re-evaluates after the refusal
    new = list(int(t) for t in toks[:40]) + list(int(t) for t in random_tokens(30, seed=11))
    gen = llm.generate(new, temp=0.0, reset=True)
    first = next(gen)
    ref2 = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW)
    exp_logits = ref2.forward(np.array(new), np.arange(len(new)))
    assert first == int(np.argmax(exp_logits[-1]))
    got_last = np.array(llm.scores[len(new) - 1], dtype=np.float64)
    assert rel_err(got_last, exp_logits[-1]) <= 1e-3

    # truncation into the sinks with no later tokens is exact
    assert llm._ctx.kv_cache_seq_rm(0, 2, -1)


@pytest.mark.parametrize("flash_attn", [True, False])
@pytest.mark.parametrize("n_past", [100, 330])
def test_state_roundtrip(tiny_paths, flash_attn, n_past):
    """save -> fresh context -> load -> same next-token logits. Before the ring wraps the restored cells keep the
    saved layout and the logits are bit-identical; after it, the restored ring is compacted, the keys are the same
    but flash attention's F16 accumulation sees them in another order, so the check there is a tolerance."""
    toks = random_tokens(350, seed=9)
    llm = load(tiny_paths["s50"], n_batch=32, n_ubatch=32, flash_attn=flash_attn)
    eval_tokens(llm, toks[:n_past])
    st = llm.save_state()
    a = eval_tokens(llm, toks[n_past : n_past + 3])

    llm2 = load(tiny_paths["s50"], n_batch=32, n_ubatch=32, flash_attn=flash_attn)
    llm2.load_state(st)
    b = eval_tokens(llm2, toks[n_past : n_past + 3])
    if n_past < 256:
        assert np.array_equal(a, b), np.abs(a - b).max()
    else:
        assert rel_err(b, a) <= (1e-3 if flash_attn else 1e-5) and np.array_equal(a.argmax(-1), b.argmax(-1))


def test_context_shift(tiny_paths, weights):
    """n_keep >= S: remove [n_keep, n_keep + d), shift the tail down; the reference mirrors it on its KV store."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = random_tokens(420, seed=13)
    llm = load(tiny_paths["s50"], n_ctx=512, n_batch=32, n_ubatch=32)
    eval_tokens(llm, toks[:400])
    ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW)
    ref.forward(toks[:400], np.arange(400))

    n_keep, d = 8, 100
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, n_keep, n_keep + d)
    llama_cpp.llama_memory_seq_add(mem, 0, n_keep + d, -1, -d)
    keep = (n_keep > ref.P) | (n_keep + d <= ref.P)
    ref.K = [k[keep] for k in ref.K]
    ref.V = [v[keep] for v in ref.V]
    ref.P = np.where(ref.P[keep] >= n_keep + d, ref.P[keep] - d, ref.P[keep])

    # continue at position 300
    llm.n_tokens = 300
    got = eval_tokens(llm, toks[400:410])
    exp = ref.forward(toks[400:410], np.arange(300, 310))
    assert rel_err(got, exp) <= 1e-3

    # n_keep < S with a short tail: refused
    assert not llama_cpp.llama_memory_seq_rm(mem, 0, 2, 100)

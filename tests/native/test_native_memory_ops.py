"""Memory operations on the split KV cache, mirrored on the reference's KV store (tests/reference.py): rollback,
state save / load, context shift (issue 3, docs/DESIGN.md §4)."""

from __future__ import annotations

import contextlib
import ctypes

import llama_cpp
import numpy as np
import pytest
from reference import RefModel
from tiny_runtime import (
    N_TOK,
    N_VOCAB,
    REF_TOL,
    SINK,
    WINDOW,
    eval_tokens,
    load,
    random_tokens,
    rel_err,
    write_gguf,
)

from rlkv_edge.runtime import _captured_log


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
    assert rel_err(got, exp) <= REF_TOL

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
    assert rel_err(got_last, exp_logits[-1]) <= REF_TOL

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
    assert rel_err(got, exp) <= REF_TOL

    # n_keep < S: removing [2, 100) leaves keys the next query can use (sinks 0, 1 and a resident window): made,
    # and the next tokens match the reference with the same keys. The shift that would close the hole would make
    # positions 100 and 101 (evicted long ago) sinks: not made, nothing moves
    assert llama_cpp.llama_memory_seq_rm(mem, 0, 2, 100)
    _drop(ref, (ref.P < 2) | (ref.P >= 100))
    before = _span(mem)
    llama_cpp.llama_memory_seq_add(mem, 0, 100, -1, -98)
    assert _span(mem) == before
    llm.n_tokens = 310
    got = eval_tokens(llm, toks[410:415])
    assert rel_err(got, ref.forward(toks[410:415], np.arange(310, 315))) <= REF_TOL


def _drop(ref, keep):
    """Keep only the reference's stored keys where `keep` is true."""
    ref.K = [k[keep] for k in ref.K]
    ref.V = [v[keep] for v in ref.V]
    ref.P = ref.P[keep]


def _state(llm, seq_id=None):
    """The context's (or one sequence's) saved state, through the C API."""
    ctx = llm._ctx.ctx
    if seq_id is None:
        n = llama_cpp.llama_state_get_size(ctx)
        buf = (ctypes.c_uint8 * n)()
        assert llama_cpp.llama_state_get_data(ctx, buf, n) == n
    else:
        n = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        buf = (ctypes.c_uint8 * n)()
        assert llama_cpp.llama_state_seq_get_data(ctx, buf, n, seq_id) == n
    return buf


@pytest.mark.parametrize(
    "other",
    [
        {"rlkv.window_size": 12},
        {"rlkv.sink_size": 2},
        {"rlkv.sparsity": 0.75},  # other F_l
        {"rlkv.sparsity": 0.55},  # the same F_l = [1, 1], another s
        "head order",  # the same S, W, s and F_l, layer 0's heads in the other order
    ],
)
@pytest.mark.parametrize("whole", [True, False])
def test_state_from_another_layout_is_refused(tiny_paths, weights, tmp_path, other, whole):
    """A state saved with S = 4, W = 8 at s = 0.5 does not restore into a context with another W, S, F_l, s or
    head order (the rows have the same sizes, so it used to restore with holes, or onto other heads): set_data
    returns 0 with a message naming both layouts, and the target context goes on exactly as before."""
    toks = random_tokens(120, seed=13)
    src = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    eval_tokens(src, toks[:100])
    state = _state(src, None if whole else 0)

    path, overrides = tiny_paths["s50"], other
    if other == "head order":
        rlkv = dict(
            scores=tiny_paths["scores"], sparsity=0.5, sink=SINK, window=WINDOW, perm=np.array([[1, 0], [0, 1]])
        )
        path, overrides = write_gguf(tmp_path / "perm.gguf", weights, rlkv=rlkv), None
    dst = load(path, n_batch=32, n_ubatch=32, kv_overrides=overrides)
    eval_tokens(dst, toks[:60])
    ctx = dst._ctx.ctx
    with _captured_log() as log:
        if whole:
            ret = llama_cpp.llama_state_set_data(ctx, state, len(state))
        else:
            ret = llama_cpp.llama_state_seq_set_data(ctx, state, len(state), 0)
    assert ret == 0
    text = "".join(t for _, t in log)
    assert "rlkv: this state was saved with S = 4, W = 8, F_l = [" in text and "not restoring it" in text, text

    got = eval_tokens(dst, toks[60:64])
    fresh = load(path, n_batch=32, n_ubatch=32, kv_overrides=overrides)
    eval_tokens(fresh, toks[:60])  # the same batches as dst: a GPU's kernels depend on the batch size
    want = eval_tokens(fresh, toks[60:64])
    assert np.array_equal(got, want), np.abs(got - want).max()


def test_state_of_a_plain_cache_is_refused(tiny_paths):
    """A state saved by a context without rlkv keys (the upstream cache) does not restore into an rlkv one."""
    toks = random_tokens(40, seed=14)
    plain = load(tiny_paths["plain"], n_batch=32, n_ubatch=32)
    eval_tokens(plain, toks)
    state = _state(plain)
    dst = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    with _captured_log() as log:
        assert llama_cpp.llama_state_set_data(dst._ctx.ctx, state, len(state)) == 0
    assert "not saved by a per-head (rlkv) KV cache" in "".join(t for _, t in log)


@contextlib.contextmanager
def _two_sequences(path, n_ctx):
    """A raw llama_context (F32 cache, 64-token batches) with room for sequences 0 and 1 in one unified cache."""
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.kv_unified = n_ctx, 64, 64, 2, True
    cp.type_k = cp.type_v = 0  # GGML_TYPE_F32
    ctx = llama_cpp.llama_init_from_model(model, cp)
    try:
        yield ctx
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def _decode(ctx, tokens, positions, seq_id):
    """llama_decode of tokens at positions in seq_id; (return code, logits of the last token)."""
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    try:
        for j, (t, p) in enumerate(zip(tokens, positions, strict=True)):
            batch.token[j], batch.pos[j], batch.n_seq_id[j] = int(t), int(p), 1
            batch.seq_id[j][0] = seq_id
            batch.logits[j] = j == len(tokens) - 1
        batch.n_tokens = len(tokens)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            return rc, None
        return 0, np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(N_VOCAB,)).astype(np.float64)
    finally:
        llama_cpp.llama_batch_free(batch)


def _decode_in_chunks(ctx, tokens, chunk=50):
    """Decode tokens into sequence 0 from position 0, `chunk` at a time."""
    for start in range(0, len(tokens), chunk):
        assert _decode(ctx, tokens[start : start + chunk], range(start, min(start + chunk, len(tokens))), 0)[0] == 0


def test_seq_cp_whole_exact_partial_refused_when_the_ring_lacks_keys(tiny_paths, weights):
    """A copy of the first part of a sequence whose ring has wrapped, whose window the ring no longer holds, is not
    made (the destination stays empty and a decode continuing it is rejected); a copy of a part whose window is
    still resident is exact, and so is a whole copy; a copy sharing every ring cell with a live source is
    refused at decode, never wrong."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = random_tokens(602, seed=31)
    with _two_sequences(tiny_paths["s50"], 1024) as ctx:
        mem = llama_cpp.llama_get_memory(ctx)
        _decode_in_chunks(ctx, toks[:600])

        def ref_logits(n):  # the reference's logits of token n - 1 after toks[:n]
            return RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW).forward(toks[:n], np.arange(n))[-1]

        # whole copy: the cells are shared, and a ring cell that two sequences share is never overwritten (as in
        # upstream's SWA cache), so while seq 0 lives the full ring has no room for seq 1: refused, not wrong
        llama_cpp.llama_memory_seq_cp(mem, 0, 1, -1, -1)
        assert llama_cpp.llama_memory_seq_pos_max(mem, 1) == 599
        rc, got = _decode(ctx, toks[600:601], [600], 1)
        assert rc != 0 or rel_err(got, ref_logits(601)) <= REF_TOL
        llama_cpp.llama_memory_seq_rm(mem, 1, -1, -1)

        llama_cpp.llama_memory_seq_cp(mem, 0, 1, 0, 150)  # keys 142..149 left the 256-cell ring long ago
        assert llama_cpp.llama_memory_seq_pos_max(mem, 1) == -1
        # continuing the copy that was not made is refused as invalid input (-1), not as a full cache (1, which
        # llama-server answers by evicting other slots' caches and shrinking its batch)
        assert _decode(ctx, toks[150:151], [150], 1)[0] == -1
        llama_cpp.llama_memory_seq_rm(mem, 1, -1, -1)  # the caller starts over: seq 1 is a new sequence again

        llama_cpp.llama_memory_seq_cp(mem, 0, 1, 0, 590)  # its window 582..589 and the sinks are resident
        assert llama_cpp.llama_memory_seq_pos_max(mem, 1) == 589
        llama_cpp.llama_memory_seq_rm(mem, 0, -1, -1)  # the copy alone: its cells are its own again
        rc, got = _decode(ctx, toks[590:591], [590], 1)
        assert rc == 0 and rel_err(got, ref_logits(591)) <= REF_TOL

        llama_cpp.llama_memory_seq_cp(mem, 1, 0, -1, -1)  # and a whole copy back, the source then dropped: exact
        llama_cpp.llama_memory_seq_rm(mem, 1, -1, -1)
        rc, got = _decode(ctx, toks[591:592], [591], 0)
        assert rc == 0 and rel_err(got, ref_logits(592)) <= REF_TOL


def test_seq_pos_min_marks_how_far_back_a_sequence_can_go(tiny_paths):
    """seq_pos_min has iSWA's meaning: 0 while the ring holds everything from the sinks on; after it has evicted
    keys, the last position a roll-back cannot reach (seq_rm there is refused, one later is accepted). llama-server
    re-processes a prompt instead of rolling back when seq_pos_min >= the position it would continue from."""
    toks = random_tokens(N_TOK, seed=41)
    llm = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    eval_tokens(llm, toks[:30])
    assert llama_cpp.llama_memory_seq_pos_min(mem, 0) == 0
    eval_tokens(llm, toks[30:N_TOK])
    pos_min = llama_cpp.llama_memory_seq_pos_min(mem, 0)
    assert SINK < pos_min < N_TOK
    assert not llama_cpp.llama_memory_seq_rm(mem, 0, pos_min, -1)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, pos_min + 1, -1)


@pytest.mark.parametrize("model", ["plain", "s0", "s50"])
def test_fill_seq_marks_what_decode_would(tiny_paths, model):
    """llama_rlkv_fill_seq (the benchmark hook) leaves the caches holding the positions decode would: same
    seq_pos_min / max and cells, so a token decoded after it sees a context of the same length."""
    from rlkv_edge import runtime

    computed = load(tiny_paths[model], n_batch=32, n_ubatch=32)
    eval_tokens(computed, random_tokens(N_TOK, seed=5))
    marked = load(tiny_paths[model], n_batch=32, n_ubatch=32)
    runtime.fill_seq(marked, N_TOK - 100)
    runtime.fill_seq(marked, 100)  # continues after the last position
    for llm in (computed, marked):
        llm.mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    for fn in (llama_cpp.llama_memory_seq_pos_min, llama_cpp.llama_memory_seq_pos_max):
        assert fn(marked.mem, 0) == fn(computed.mem, 0)
    assert llama_cpp.llama_memory_seq_pos_max(marked.mem, 0) == N_TOK - 1

    # the next token decodes (the local heads' sinks and window are all resident)
    marked.n_tokens = N_TOK
    marked.eval([5])

    # past n_ctx: refused before anything is marked
    with pytest.raises(Exception, match="pass the context"):
        runtime.fill_seq(marked, 512)
    assert llama_cpp.llama_memory_seq_pos_max(marked.mem, 0) == N_TOK
    with pytest.raises(Exception, match="invalid input"):
        runtime.fill_seq(marked, 1, seq_id=7)


def _span(mem, seq_id=0):
    return llama_cpp.llama_memory_seq_pos_min(mem, seq_id), llama_cpp.llama_memory_seq_pos_max(mem, seq_id)


def test_seq_add_exact_or_refused(tiny_paths, weights):
    """seq_add that would bring evicted keys into the sinks is not made (the sequence stays as it was); one that
    keeps every key the next query's local heads need resident is made, and the next tokens match the reference
    with the moved positions."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = random_tokens(320, seed=17)
    llm = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    eval_tokens(llm, toks[:300])  # the 256-cell ring has evicted positions after the sinks
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    before = _span(mem)

    # dropping the first 20 positions would make 20..23 the new sinks: long evicted, so refused
    with _captured_log() as log:
        llama_cpp.llama_memory_seq_add(mem, 0, 0, -1, -20)
    assert _span(mem) == before
    assert "not shifting" in "".join(t for _, t in log)

    # dropping the first 100: the new sinks 100..103 and the window are resident (the ring holds the last ~250
    # positions), so it is made: positions < 100 leave both caches, the rest move down by 100
    llama_cpp.llama_memory_seq_add(mem, 0, 0, -1, -100)
    assert _span(mem)[1] == 199
    ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW)
    ref.forward(toks[:300], np.arange(300))
    keep = ref.P >= 100
    ref.K = [k[keep] for k in ref.K]
    ref.V = [v[keep] for v in ref.V]
    ref.P = ref.P[keep] - 100
    llm.n_tokens = 200
    got = eval_tokens(llm, toks[300:310])
    assert rel_err(got, ref.forward(toks[300:310], np.arange(200, 210))) <= REF_TOL


def test_seq_div_exact_or_refused(tiny_paths, weights):
    """seq_div (self-extend) before the ring evicts anything does what upstream's own cache does; after the ring
    has evicted keys, halving the positions would make evicted keys sinks: not made.

    Upstream's seq_div at this llama.cpp commit rotates each key to 2·old - new, not to its new position
    (llama_kv_cells::pos_div adds old - new to the pending K-shift; pos_add adds new - old). The plain model (no
    rlkv) shows it against the reference; the reference mirrors it so the rlkv cache is checked against
    upstream's behaviour, bug included."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = random_tokens(320, seed=19)

    for model, full in (("plain", None), ("s50", n_full)):
        llm = load(tiny_paths[model], n_batch=32, n_ubatch=32)
        eval_tokens(llm, toks[:100])
        mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
        llama_cpp.llama_memory_seq_div(mem, 0, 0, -1, 2)
        assert _span(mem) == (0, 49)
        local = full is not None
        ref = RefModel(weights, n_full=full, sink=SINK if local else 0, window=WINDOW if local else 0)
        ref.forward(toks[:100], np.arange(100))
        old, ref.P = ref.P, ref.P // 2
        ref.rot_offset = 2 * (old - ref.P)  # rotated at 2·old - new = new + 2·(old - new): upstream's K-shift
        llm.n_tokens = 50
        got = eval_tokens(llm, toks[100:105])
        assert rel_err(got, ref.forward(toks[100:105], np.arange(50, 55))) <= REF_TOL, model

    wrapped = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    eval_tokens(wrapped, toks[:300])
    mem = llama_cpp.llama_get_memory(wrapped._ctx.ctx)
    before = _span(mem)
    llama_cpp.llama_memory_seq_div(mem, 0, 0, -1, 2)  # new sinks 0..3 would be old 0..7; 4..7 are evicted
    assert _span(mem) == before


def test_seq_keep_exact(tiny_paths, weights):
    """A fork (whole seq_cp) kept alone with seq_keep continues exactly."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = random_tokens(301, seed=23)
    with _two_sequences(tiny_paths["s50"], 512) as ctx:
        mem = llama_cpp.llama_get_memory(ctx)
        _decode_in_chunks(ctx, toks[:300])
        llama_cpp.llama_memory_seq_cp(mem, 0, 1, -1, -1)
        llama_cpp.llama_memory_seq_keep(mem, 1)
        assert _span(mem, 0) == (-1, -1) and _span(mem, 1)[1] == 299
        rc, got = _decode(ctx, toks[300:301], [300], 1)
        ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW).forward(toks[:301], np.arange(301))[-1]
        assert rc == 0 and rel_err(got, ref) <= REF_TOL


@pytest.mark.parametrize(
    ("model", "n_ctx", "can"), [("plain", 512, True), ("s0", 512, True), ("s50", 512, False), ("s50", 256, True)]
)
def test_can_shift_as_iswa(tiny_paths, model, n_ctx, can):
    """Shifting is offered (llama_memory_can_shift) only when no ring evicts: llama-server then turns its context
    shift and --cache-reuse off instead of aborting on a refused seq_rm."""
    llm = load(tiny_paths[model], n_ctx=n_ctx, n_batch=32, n_ubatch=32)
    assert llama_cpp.llama_memory_can_shift(llama_cpp.llama_get_memory(llm._ctx.ctx)) is can


def _wrapped(tiny_paths, weights, seed):
    """The s = 0.5 model after 400 tokens (the 256-cell ring has evicted all but the sinks and the last ~250
    positions), its memory, the tokens and the reference holding the same keys."""
    from rlkv_edge.masks import full_heads_per_layer

    toks = random_tokens(420, seed=seed)
    llm = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    eval_tokens(llm, toks[:400])
    ref = RefModel(weights, n_full=full_heads_per_layer(tiny_paths["scores"], 0.5), sink=SINK, window=WINDOW)
    ref.forward(toks[:400], np.arange(400))
    return llm, llama_cpp.llama_get_memory(llm._ctx.ctx), toks, ref


def _next_matches(llm, toks, ref, q, n=5):
    """The next n tokens decoded at q..q+n-1 match the reference (the decode is accepted)."""
    llm.n_tokens = q
    got = eval_tokens(llm, toks[400 : 400 + n])
    assert rel_err(got, ref.forward(toks[400 : 400 + n], np.arange(q, q + n))) <= REF_TOL


def test_seq_rm_of_a_hole_in_the_window_is_made_and_exact(tiny_paths, weights):
    """Issue 28's trace (900..950 of 0..999 at S64/W256, here 390..395 of 0..399 at S4/W8): seq_rm returned true and
    the next decode was refused. The next query's local heads see the keys that are stored; the hole is not
    stored, so the removal is made and the next tokens match the reference with the same keys."""
    llm, mem, toks, ref = _wrapped(tiny_paths, weights, seed=61)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, 390, 395)
    _drop(ref, (ref.P < 390) | (ref.P >= 395))
    _next_matches(llm, toks, ref, 400)


def test_positive_seq_add_opening_a_gap_is_made_and_exact(tiny_paths, weights):
    """A positive seq_add that opens a gap inside the next query's window (395..399 -> 398..402, the window of 403
    being 396..402) was made and then its decode refused: now the gap holds no keys and the decode is exact."""
    llm, mem, toks, ref = _wrapped(tiny_paths, weights, seed=62)
    llama_cpp.llama_memory_seq_add(mem, 0, 395, -1, 3)
    assert _span(mem)[1] == 402
    ref.P = np.where(ref.P >= 395, ref.P + 3, ref.P)
    _next_matches(llm, toks, ref, 403)


def test_a_sequence_may_start_anywhere(tiny_paths, weights):
    """A batch that starts an empty sequence at q > 0 is accepted, as upstream accepts it: no keys are stored
    before q (no sinks either), and the tokens match the reference at those positions."""
    from rlkv_edge.masks import full_heads_per_layer

    toks = random_tokens(40, seed=63)
    llm = load(tiny_paths["s50"], n_batch=32, n_ubatch=32)
    llm.n_tokens = 50
    got = eval_tokens(llm, toks)
    ref = RefModel(weights, n_full=full_heads_per_layer(tiny_paths["scores"], 0.5), sink=SINK, window=WINDOW)
    assert rel_err(got, ref.forward(toks, np.arange(50, 90))) <= REF_TOL


@pytest.mark.parametrize(
    "op",
    [
        "seq_rm past the window",  # returns false
        "seq_rm of another sequence id",
        "seq_add bringing evicted keys into the sinks",
        "seq_add of every sequence (-1)",
        "seq_div by 0",
        "seq_div of every sequence (-1)",
        "seq_div making evicted keys sinks",
        "seq_cp into itself",
    ],
)
def test_a_refused_operation_changes_nothing(tiny_paths, weights, op):
    """Every refusal is made at the call and leaves the cache as it was: same span, and the next tokens at 400
    match the reference of the untouched sequence (no SIGFPE for d = 0, no assertion for seq_id -1)."""
    llm, mem, toks, ref = _wrapped(tiny_paths, weights, seed=64)
    before = _span(mem)
    with _captured_log():
        if op == "seq_rm past the window":
            assert not llama_cpp.llama_memory_seq_rm(mem, 0, 100, -1)
        elif op == "seq_rm of another sequence id":
            assert not llama_cpp.llama_memory_seq_rm(mem, 5, 0, -1)
        elif op == "seq_add bringing evicted keys into the sinks":
            llama_cpp.llama_memory_seq_add(mem, 0, 0, -1, -20)
        elif op == "seq_add of every sequence (-1)":  # made for seq 0 alone (see the gap test); upstream asserts
            llama_cpp.llama_memory_seq_add(mem, -1, 395, -1, 3)
        elif op == "seq_div by 0":
            llama_cpp.llama_memory_seq_div(mem, 0, 0, -1, 0)
        elif op == "seq_div of every sequence (-1)":  # 399 -> 199, outside the window: fine for seq 0 alone
            llama_cpp.llama_memory_seq_div(mem, -1, 399, -1, 2)
        elif op == "seq_div making evicted keys sinks":
            llama_cpp.llama_memory_seq_div(mem, 0, 0, -1, 2)
        else:
            llama_cpp.llama_memory_seq_cp(mem, 0, 0, 0, 200)
    assert _span(mem) == before
    _next_matches(llm, toks, ref, 400)


@pytest.mark.parametrize("whole", [True, False])
def test_a_failed_restore_leaves_nothing_half_restored(tiny_paths, weights, whole):
    """A whole-context state whose ring holds more cells than the target's ring (same layout, a larger n_ubatch)
    restores the full cache and then fails on the local one: set_data returns 0 and the sequence is not left with
    its full heads' keys alone; it is empty, and decoding it from 0 matches the reference. (One sequence's state
    restores: the ring evicts as it places the cells; the next tokens then match the reference.)"""
    from rlkv_edge.masks import full_heads_per_layer

    toks = random_tokens(620, seed=65)
    src = load(tiny_paths["s50"], n_ctx=1024, n_batch=512, n_ubatch=512)  # ring: pad256(S + W + 512) = 768 cells
    eval_tokens(src, toks[:600])
    state = _state(src, None if whole else 0)

    dst = load(tiny_paths["s50"], n_ctx=1024, n_batch=32, n_ubatch=32)  # ring: 256 cells
    eval_tokens(dst, toks[:40])
    ctx = dst._ctx.ctx
    ref = RefModel(weights, n_full=full_heads_per_layer(tiny_paths["scores"], 0.5), sink=SINK, window=WINDOW)
    mem = llama_cpp.llama_get_memory(ctx)
    if not whole:
        assert llama_cpp.llama_state_seq_set_data(ctx, state, len(state), 0) == len(state)
        assert _span(mem)[1] == 599
        dst.n_tokens = 600
        got = eval_tokens(dst, toks[600:605])
        assert rel_err(got, ref.forward(toks[:605], np.arange(605))[600:]) <= REF_TOL
        return
    with _captured_log():
        assert llama_cpp.llama_state_set_data(ctx, state, len(state)) == 0
    assert _span(mem) == (-1, -1)
    dst.n_tokens = 0
    got = eval_tokens(dst, toks[:20])
    assert rel_err(got, ref.forward(toks[:20], np.arange(20))) <= REF_TOL


def test_all_local_heads_refuse_what_the_ring_evicted_and_serve_the_rest(tiny_paths, weights):
    """s = 1 (no full cache): the ring is the only store, so every non-sink position before the newest query's
    window that it does not hold counts as evicted. A roll-back past the window is refused and changes nothing;
    one within the ring's slack and a hole inside the window are made, and the next tokens match the reference."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 1.0)
    assert list(n_full) == [0, 0]
    toks = random_tokens(420, seed=66)
    llm = load(tiny_paths["s100"], n_batch=32, n_ubatch=32)
    eval_tokens(llm, toks[:400])
    mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
    ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW)
    ref.forward(toks[:400], np.arange(400))

    before = _span(mem)
    assert not llama_cpp.llama_memory_seq_rm(mem, 0, 100, -1)  # the window of 100 was evicted long ago
    assert _span(mem) == before

    assert llama_cpp.llama_memory_seq_rm(mem, 0, 398, -1)  # back by two: 391..397 are resident
    ref.truncate(398)
    assert llama_cpp.llama_memory_seq_rm(mem, 0, 393, 395)  # a hole in the window of 398
    _drop(ref, (ref.P < 393) | (ref.P >= 395))
    llm.n_tokens = 398
    got = eval_tokens(llm, toks[400:405])
    assert rel_err(got, ref.forward(toks[400:405], np.arange(398, 403))) <= REF_TOL

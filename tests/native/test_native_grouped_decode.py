"""The grouped decode path (native/rlkv/rlkv-decode.cpp): a sequence gets the same logits, bit for bit, at 1, 2
and 4 threads, beside another sequence's cells (unified cache) and beside another sequence in the same ubatch
(one stream each), since its chunks of cells follow the sequence's own visible cells, not n_kv or the thread
count; with RLKV_DECODE_ATTN=force the upstream cache (no rlkv metadata, s = 0) decodes on it too and matches
the float64 reference (issue 28, docs/DESIGN.md §4)."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
from gguf_fixtures import write_tiny_gguf
from reference import RefModel
from tiny_runtime import (
    N_GPU_LAYERS,
    N_VOCAB,
    REF_TOL,
    SINK,
    WINDOW,
    eval_tokens,
    load,
    make_weights,
    random_tokens,
    rel_err,
    write_gguf,
)

from rlkv_edge.masks import full_heads_per_layer
from rlkv_edge.runtime import grouped_decode, grouped_decode_runs

pytestmark = pytest.mark.skipif(N_GPU_LAYERS > 0, reason="the grouped decode path serves caches in host memory only")

N_A, N_DEC = 1300, 3  # A's full heads see > 1280 cells: 6 chunks (the old count followed n_kv and the threads)
SCORES = np.array([[0.9, 0.2], [0.5, 0.1]], dtype=np.float32)


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """(rlkv path at s = 0.5, TinyModel): 8 query heads over 2 KV heads, head size 16."""
    d = tmp_path_factory.mktemp("determinism")
    w = make_weights(seed=4, n_head=8, n_head_kv=2, head_dim=16, n_embd=128)
    model = write_tiny_gguf(d / "plain.gguf", n_head=8, n_head_kv=2, head_dim=16, weights=w, name="tiny-gqa",
                            add_bos=False)  # fmt: skip
    rlkv = dict(scores=SCORES, sparsity=0.5, sink=SINK, window=WINDOW)
    return write_gguf(d / "rlkv.gguf", model, rlkv=rlkv), model


@pytest.fixture
def grouped(monkeypatch):
    """Skip where the CPU cannot run the grouped decode path."""
    monkeypatch.delenv("RLKV_DECODE_ATTN", raising=False)
    if not grouped_decode():
        pytest.skip("this CPU lacks AVX2/FMA: the grouped decode path is off")
    return monkeypatch


def _batch(ctx, items):
    """llama_decode of (token, position, seq_id) items, logits for every item; returns their logits."""
    batch = llama_cpp.llama_batch_init(len(items), 0, 1)
    try:
        for j, (t, p, s) in enumerate(items):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = int(t), int(p), 1, True
            batch.seq_id[j][0] = s
        batch.n_tokens = len(items)
        assert llama_cpp.llama_decode(ctx, batch) == 0
        logits = llama_cpp.llama_get_logits(ctx)
        return np.ctypeslib.as_array(logits, shape=(len(items), N_VOCAB)).astype(np.float64)
    finally:
        llama_cpp.llama_batch_free(batch)


def _run(path, threads, *, unified, n_b=0, together=False):
    """Sequence A (and n_b tokens of B, prefilled in alternating 64-token batches so their cells interleave) then
    N_DEC tokens of A decoded one at a time (with one of B's in the same ubatch if together): A's decoded logits."""
    a, b = random_tokens(N_A + N_DEC, seed=51), random_tokens(n_b + N_DEC, seed=52)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    cp = llama_cpp.llama_context_default_params()
    # n_ubatch 3072 makes the local ring (pad256(2 (S + W) + n_ubatch) cells) hold both sequences whole: cells
    # are taken in order, so A's cells lie in A's order with or without B's between them
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = 4096 if unified else 8192, 3072, 3072, 2
    cp.kv_unified = unified
    cp.n_threads = cp.n_threads_batch = threads
    cp.type_k = cp.type_v = 1  # F16: the grouped path's cache type
    cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, cp)
    assert ctx
    try:
        for start in range(0, max(N_A, n_b), 64):
            for s, toks, n in ((0, a, N_A), (1, b, n_b)):
                items = [(toks[i], i, s) for i in range(start, min(start + 64, n))]
                if items:
                    _batch(ctx, items)
        out = []
        for i in range(N_DEC):
            items = [(a[N_A + i], N_A + i, 0)] + ([(b[n_b + i], n_b + i, 1)] if together else [])
            out.append(_batch(ctx, items)[0])
        return np.array(out)
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def test_decode_is_the_same_at_any_thread_count_and_beside_other_sequences(gqa, grouped):
    """A's decoded logits: equal at 1, 2, 4 threads and with B's cells between A's (unified cache); decoded in one
    ubatch with B (one stream each), equal whether B is shorter or longer than A (then n_kv is B's); and they match
    the reference. (A ubatch of two tokens is not compared with one of one: ggml's matrix products differ.)"""
    path, model = gqa
    runs0 = grouped_decode_runs()
    runs = {
        "1 thread": _run(path, 1, unified=True),
        "2 threads": _run(path, 2, unified=True),
        "4 threads": _run(path, 4, unified=True),
        "B's cells between A's, 4 threads": _run(path, 4, unified=True, n_b=1800),
        "one stream each, A alone": _run(path, 2, unified=False),
    }
    first = runs["1 thread"]
    for name, got in runs.items():
        assert np.array_equal(got, first), (name, float(np.abs(got - first).max()))
    short_b = _run(path, 1, unified=False, n_b=200, together=True)
    long_b = _run(path, 1, unified=False, n_b=1800, together=True)  # n_kv alone changes
    assert np.array_equal(short_b, long_b), float(np.abs(short_b - long_b).max())

    assert grouped_decode_runs() > runs0  # the grouped path ran

    a = random_tokens(N_A + N_DEC, seed=51)
    n_full = full_heads_per_layer(SCORES, 0.5)
    ref = RefModel(model, n_full=n_full, sink=SINK, window=WINDOW).forward(a, np.arange(len(a)))[N_A:]
    assert rel_err(first, ref) <= REF_TOL


def test_force_puts_the_upstream_cache_on_the_grouped_path(gqa, grouped, tmp_path):
    """RLKV_DECODE_ATTN=force: a file without rlkv metadata and one at s = 0 (both on the upstream cache) decode on
    the grouped path (its node count grows; the logits differ from ggml's flash attention in the low bits, as the
    grouped path sums V in F32) and match the float64 reference; the two files give the same logits. Unset, the
    upstream cache keeps ggml's path."""
    _, model = gqa
    plain = model.path
    s0 = write_gguf(tmp_path / "s0.gguf", model, rlkv=dict(scores=SCORES, sparsity=0.0, sink=SINK, window=WINDOW))
    toks = random_tokens(600, seed=53)
    ref = RefModel(model).forward(toks, np.arange(len(toks)))

    def decode(path, env):
        grouped.setenv("RLKV_DECODE_ATTN", env)
        llm = load(path, n_ctx=1024, n_batch=8, n_ubatch=8, type_k=1, type_v=1)  # F16 K/V
        runs0 = grouped_decode_runs()
        try:
            return eval_tokens(llm, toks, one_by_one=True), grouped_decode_runs() - runs0
        finally:
            llm.close()

    ggml, n_ggml = decode(plain, "1")
    forced, n_forced = decode(plain, "force")
    forced_s0, n_forced_s0 = decode(s0, "force")
    assert n_ggml == 0
    assert n_forced == n_forced_s0 == len(toks) * model.n_layer  # one node per layer and token
    assert rel_err(forced, ref) <= REF_TOL and rel_err(ggml, ref) <= REF_TOL
    assert not np.array_equal(forced, ggml)
    assert np.array_equal(forced, forced_s0)

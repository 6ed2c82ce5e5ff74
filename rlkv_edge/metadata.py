"""The GGUF format layer every stage shares: open a GGUF safely, read the attention shape, the supported
architectures and the rlkv.* metadata (docs/DESIGN.md §3)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField

from rlkv_edge.errors import MetadataError

# The architectures the patched runtime supports (native/rlkv/rlkv-meta.cpp). llama.cpp 0c1e57098 has no
# plain "mistral" architecture: Mistral 7B GGUFs are "llama"; "mistral3" is Mistral Small 3.x.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral3")
RLKV_PREFIX = "rlkv."


@dataclass(frozen=True)
class ModelInfo:
    """Attention shape of a GGUF model: what the head permutation acts on."""

    architecture: str
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_embd: int
    context_length: int | None

    @property
    def group_size(self) -> int:
        """g = n_head / n_head_kv: query heads per KV head."""
        return self.n_head // self.n_head_kv


def open_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Memory-map a GGUF with a one-line MetadataError for anything that is not a readable GGUF."""
    p = Path(path)
    if not p.exists():
        raise MetadataError(f"{p}: no such file")
    if not p.is_file():
        raise MetadataError(f"{p}: not a regular file")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise MetadataError(f"{p}: cannot read ({exc.strerror})") from None
    if magic != b"GGUF":
        raise MetadataError(f"{p}: not a GGUF file (bad magic {magic!r})")
    try:
        reader = GGUFReader(p, "r")
    except Exception as exc:  # gguf-py raises ValueError/IndexError/KeyError/... on damaged files
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MetadataError(f"{p}: damaged or truncated GGUF ({detail})") from None
    if reader.byte_order != "I":
        raise MetadataError(f"{p}: big-endian GGUF files are not supported")
    size = os.path.getsize(p)
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise MetadataError(f"{p}: truncated GGUF (tensor {t.name} runs past the end of the file)")
    return reader


def field_value(reader: GGUFReader, key: str) -> Any:
    """The value of a metadata key (scalar, str or list), or None when absent."""
    f = reader.get_field(key)
    if f is None:
        return None
    return f.contents()


def field_array(f: ReaderField) -> np.ndarray:
    """A numeric array field as one numpy array (fast path over gguf-py's per-item parts)."""
    if not f.types or f.types[0] != GGUFValueType.ARRAY:
        return np.asarray([f.contents()])
    return np.concatenate([np.asarray(f.parts[i]).ravel() for i in f.data]) if f.data else np.zeros(0)


def _uniform_int(reader: GGUFReader, key: str, path: Path, required: bool = True) -> int | None:
    """An integer hyper-parameter that may be stored per layer; refuse non-uniform arrays."""
    f = reader.get_field(key)
    if f is None:
        if required:
            raise MetadataError(f"{path}: missing metadata key {key}")
        return None
    values = field_array(f)
    if values.size == 0:
        raise MetadataError(f"{path}: metadata key {key} is empty")
    if not np.all(values == values[0]):
        raise MetadataError(f"{path}: {key} differs between layers ({sorted(set(values.tolist()))}); not supported")
    return int(values[0])


def model_info(reader: GGUFReader, path: str | os.PathLike[str], check_arch: bool = True) -> ModelInfo:
    """Read architecture, L, n_head, H, head dims; refuse unsupported architectures and odd shapes."""
    p = Path(path)
    arch = field_value(reader, "general.architecture")
    if not isinstance(arch, str):
        raise MetadataError(f"{p}: missing general.architecture")
    if check_arch and arch not in SUPPORTED_ARCHITECTURES:
        raise MetadataError(f"{p}: unsupported architecture '{arch}' (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    n_layer = _uniform_int(reader, f"{arch}.block_count", p)
    n_head = _uniform_int(reader, f"{arch}.attention.head_count", p)
    assert n_layer is not None and n_head is not None
    n_head_kv = _uniform_int(reader, f"{arch}.attention.head_count_kv", p, required=False) or n_head
    n_embd = _uniform_int(reader, f"{arch}.embedding_length", p)
    assert n_embd is not None
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise MetadataError(f"{p}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    default_dim = n_embd // n_head
    dk = _uniform_int(reader, f"{arch}.attention.key_length", p, required=False) or default_dim
    dv = _uniform_int(reader, f"{arch}.attention.value_length", p, required=False) or default_dim
    ctx = _uniform_int(reader, f"{arch}.context_length", p, required=False)
    return ModelInfo(arch, n_layer, n_head, n_head_kv, dk, dv, n_embd, ctx)


def has_rlkv(reader: GGUFReader) -> bool:
    """Whether the file already carries rlkv.* metadata (was converted before)."""
    return any(name.startswith(RLKV_PREFIX) for name in reader.fields)


def stored_perm(reader: GGUFReader, info: ModelInfo, path: str | os.PathLike[str]) -> np.ndarray:
    """rlkv.head_perm as an [L, H] int array (identity when absent), checked to permute each layer."""
    f = reader.get_field("rlkv.head_perm")
    shape = (info.n_layer, info.n_head_kv)
    if f is None:
        return np.tile(np.arange(info.n_head_kv, dtype=np.int64), (info.n_layer, 1))
    perm = field_array(f).astype(np.int64)
    if perm.size != info.n_layer * info.n_head_kv:
        raise MetadataError(f"{path}: rlkv.head_perm has {perm.size} entries, expected {shape[0]} x {shape[1]}")
    perm = perm.reshape(shape)
    expected = np.arange(info.n_head_kv)
    if not all(np.array_equal(np.sort(row), expected) for row in perm):
        raise MetadataError(f"{path}: rlkv.head_perm is not a permutation of each layer's heads")
    return perm


def read_rlkv_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Model shape and rlkv.* metadata of a GGUF; scores both as stored and in the original head order."""
    p = Path(path)
    reader = open_gguf(p)
    info = model_info(reader, p, check_arch=False)
    out: dict[str, Any] = {
        "path": str(p),
        "architecture": info.architecture,
        "n_layer": info.n_layer,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "head_dim_k": info.head_dim_k,
        "head_dim_v": info.head_dim_v,
        "context_length": info.context_length,
        "converted": field_value(reader, "rlkv.version") is not None,
    }
    if not out["converted"]:
        return out
    f = reader.get_field("rlkv.head_scores")
    if f is None:
        raise MetadataError(f"{p}: has rlkv.version but no rlkv.head_scores")
    stored = field_array(f).astype(np.float32)
    if stored.size != info.n_layer * info.n_head_kv:
        raise MetadataError(
            f"{p}: rlkv.head_scores has {stored.size} entries, expected {info.n_layer} x {info.n_head_kv}"
        )
    stored = stored.reshape(info.n_layer, info.n_head_kv)
    perm = stored_perm(reader, info, p)
    original = np.zeros_like(stored)
    np.put_along_axis(original, perm, stored, axis=1)
    out.update(
        {
            "rlkv_version": int(field_value(reader, "rlkv.version")),
            "sparsity": _float_or_none(field_value(reader, "rlkv.sparsity")),
            "sink_size": _int_or_none(field_value(reader, "rlkv.sink_size")),
            "window_size": _int_or_none(field_value(reader, "rlkv.window_size")),
            "source": field_value(reader, "rlkv.source"),
            "head_scores": stored.tolist(),
            "head_perm": perm.tolist(),
            "scores": original.tolist(),
        }
    )
    return out


def _float_or_none(v: Any) -> float | None:
    """float(v) unless None."""
    return None if v is None else float(v)


def _int_or_none(v: Any) -> int | None:
    """int(v) unless None."""
    return None if v is None else int(v)

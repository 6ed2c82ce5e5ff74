"""The GGUF format layer every stage shares: read a GGUF's header (fast: token arrays are skipped, not
parsed), the attention shape, the supported architectures, and the rlkv.* metadata — validated by the
same rules, in the same order and with the same messages as the native loader
(`native/rlkv/rlkv-meta.cpp`, `llama_rlkv_load_meta`), so that `inspect`, `chat`'s checks and the runtime
accept and refuse the same files (docs/DESIGN.md §3, §4)."""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
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


def field_array(f: ReaderField) -> np.ndarray:
    """A numeric array field as one numpy array (fast path over gguf-py's per-item parts)."""
    if not f.types or f.types[0] != GGUFValueType.ARRAY:
        return np.asarray([f.contents()])
    return np.concatenate([np.asarray(f.parts[i]).ravel() for i in f.data]) if f.data else np.zeros(0)


def _uniform_int(values: Mapping[str, Any], key: str, path: Path, required: bool = True) -> int | None:
    """An integer hyper-parameter that may be stored per layer; refuse non-uniform arrays."""
    raw = values.get(key)
    if raw is None:
        if required:
            raise MetadataError(f"{path}: missing metadata key {key}")
        return None
    try:
        arr = np.asarray(raw, dtype=np.int64).ravel()
    except (TypeError, ValueError, OverflowError):
        raise MetadataError(f"{path}: metadata key {key} is not an integer") from None
    if arr.size == 0:
        raise MetadataError(f"{path}: metadata key {key} is empty")
    if not np.all(arr == arr[0]):
        raise MetadataError(f"{path}: {key} differs between layers ({sorted(set(arr.tolist()))}); not supported")
    return int(arr[0])


def model_info(values: Mapping[str, Any], path: str | os.PathLike[str], check_arch: bool = True) -> ModelInfo:
    """Read architecture, L, n_head, H, head dims from a header's values; refuse unsupported ones and odd shapes."""
    p = Path(path)
    arch = values.get("general.architecture")
    if not isinstance(arch, str):
        raise MetadataError(f"{p}: missing general.architecture")
    if check_arch and arch not in SUPPORTED_ARCHITECTURES:
        raise MetadataError(f"{p}: unsupported architecture '{arch}' (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
    n_layer = _uniform_int(values, f"{arch}.block_count", p)
    n_head = _uniform_int(values, f"{arch}.attention.head_count", p)
    assert n_layer is not None and n_head is not None
    n_head_kv = _uniform_int(values, f"{arch}.attention.head_count_kv", p, required=False) or n_head
    n_embd = _uniform_int(values, f"{arch}.embedding_length", p)
    assert n_embd is not None
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise MetadataError(f"{p}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    default_dim = n_embd // n_head
    dk = _uniform_int(values, f"{arch}.attention.key_length", p, required=False) or default_dim
    dv = _uniform_int(values, f"{arch}.attention.value_length", p, required=False) or default_dim
    ctx = _uniform_int(values, f"{arch}.context_length", p, required=False)
    return ModelInfo(arch, n_layer, n_head, n_head_kv, dk, dv, n_embd, ctx)


# ---------------------------------------------------------------- the header, read as gguf.cpp reads it

GGUF_TYPE_NAMES = ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64")
_NUMERIC = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
_STR, _ARR = 8, 9
_GGML_TYPE_COUNT = 43  # ggml.h of llama.cpp 0c1e57098
_GGML_MAX_NAME = 64
_DEFAULT_ALIGNMENT = 32
_KNOWN_TYPES = {int(t) for t in GGMLQuantizationType}


@dataclass(frozen=True)
class Field:
    """One metadata key: its gguf type name ("u32", "arr", ...), an array's item type, and the value."""

    type: str
    item_type: str | None
    value: Any  # scalar, str, np.ndarray of numbers, list[str], or None for a string array not read


@dataclass
class GGUFHeader(Mapping[str, Any]):
    """The key/value metadata of a GGUF as a Mapping key -> value, with each key's types in `fields`."""

    path: Path
    fields: dict[str, Field] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        """The value of a key."""
        return self.fields[key].value

    def __iter__(self) -> Any:
        """Keys in file order."""
        return iter(self.fields)

    def __len__(self) -> int:
        """Number of keys."""
        return len(self.fields)


class _Damaged(Exception):
    """A GGUF gguf.cpp would refuse; the message is the reason gguf.cpp logs first."""


class _Cursor:
    """Little-endian reads over a file's bytes; running past the end raises `_Damaged(reason)`."""

    def __init__(self, data: memoryview, reason: str) -> None:
        self.data, self.pos, self.reason = data, 0, reason

    def take(self, n: int) -> memoryview:
        """The next n bytes."""
        if n < 0 or self.pos + n > len(self.data):
            raise _Damaged(self.reason)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        """One struct value."""
        return struct.unpack_from(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> bytes:
        """A gguf string (u64 length + bytes)."""
        return bytes(self.take(self.unpack("<Q")))

    def skip_strings(self, n: int) -> None:
        """Step over n gguf strings without decoding them."""
        for _ in range(n):
            self.take(self.unpack("<Q"))


def _read_kv(cur: _Cursor, header: GGUFHeader, i: int, string_arrays: bool) -> None:
    """Read key/value pair i into header, with gguf.cpp's checks in gguf.cpp's order."""
    raw = cur.string()
    key = raw.decode("utf-8", errors="replace")
    shown = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")  # as C's %s prints it
    if not key:
        raise _Damaged(f"key {i} is empty")
    if key in header.fields:
        raise _Damaged(f"duplicate key '{shown}' for KV pair {i}")
    gtype = cur.unpack("<i")
    item: int | None = None
    n = 1
    if gtype == _ARR:
        item, n = cur.unpack("<i"), cur.unpack("<Q")
    t = gtype if item is None else item
    if t not in _NUMERIC and t != _STR:
        raise _Damaged(f"key '{shown}' has invalid GGUF type {t}")
    value: Any
    if t == _STR and item is None:
        value = cur.string().decode("utf-8", errors="replace")
    elif t == _STR and (string_arrays or key.startswith((RLKV_PREFIX, "general."))):
        value = [cur.string().decode("utf-8", errors="replace") for _ in range(n)]
    elif t == _STR:
        cur.skip_strings(n)  # e.g. a 262k-token vocabulary: walk the lengths, decode nothing
        value = None
    else:
        arr = np.frombuffer(cur.take(np.dtype(_NUMERIC[t]).itemsize * n), dtype=_NUMERIC[t])
        arr = arr.astype(bool) if t == 7 else arr
        value = arr[0].item() if item is None else arr
    header.fields[key] = Field(GGUF_TYPE_NAMES[gtype], None if item is None else GGUF_TYPE_NAMES[item], value)


def _check_tensors(cur: _Cursor, n_tensors: int, alignment: int) -> None:
    """Tensor infos and data offsets, checked as gguf.cpp and llama.cpp's model loader check them."""
    cur.reason = "failed to read tensor info"
    infos = []
    seen: set[bytes] = set()
    for i in range(n_tensors):
        raw = cur.string()
        name = raw.decode("utf-8", errors="replace")
        if len(raw) >= _GGML_MAX_NAME:
            raise _Damaged(f"tensor name {i} is too long: {len(raw)} >= {_GGML_MAX_NAME}")
        if raw in seen:
            raise _Damaged(f"duplicate tensor name '{name}' for tensor {i}")
        seen.add(raw)
        n_dims = cur.unpack("<I")
        if n_dims > 4:
            raise _Damaged(f"tensor '{name}' has invalid number of dimensions: {n_dims} > 4")
        ne = [cur.unpack("<q") for _ in range(n_dims)] + [1] * (4 - n_dims)
        bad = next((j for j, d in enumerate(ne) if d < 0), None)
        if bad is not None:
            raise _Damaged(f"tensor '{name}' dimension {bad} has invalid number of elements: {ne[bad]} < 0")
        ttype = cur.unpack("<i")
        if not 0 <= ttype < _GGML_TYPE_COUNT:
            raise _Damaged(f"tensor '{name}' has invalid ggml type {ttype}. should be in [0, {_GGML_TYPE_COUNT})")
        infos.append((name, ne, ttype, cur.unpack("<Q")))
    data_start = -(-cur.pos // alignment) * alignment
    size = 0
    for name, ne, ttype, offset in infos:
        if offset != size:
            raise _Damaged(f"tensor '{name}' has offset {offset}, expected {size}")
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)] if ttype in _KNOWN_TYPES else (1, 0)
        nbytes = ne[0] // block * type_size * ne[1] * ne[2] * ne[3]
        if data_start + offset + nbytes > len(cur.data):
            raise _Damaged(f"tensor '{name}' data is not within the file bounds, model is corrupted or incomplete")
        size += -(-nbytes // alignment) * alignment


def read_header(path: str | os.PathLike[str], *, string_arrays: bool = False) -> GGUFHeader:
    """A GGUF's key/value metadata (string arrays such as the vocabulary skipped unless asked for), with
    its tensor infos checked; MetadataError with gguf.cpp's reason for a file llama.cpp would refuse."""
    p = Path(path)
    if not p.is_file():
        raise MetadataError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    try:
        with open(p, "rb") as f:
            data = memoryview(f.read())
    except OSError as exc:
        raise MetadataError(f"{p}: cannot read ({exc.strerror})") from None
    if bytes(data[:4]) != b"GGUF":
        raise MetadataError(f"{p}: not a GGUF file (bad magic {bytes(data[:4])!r})")
    header = GGUFHeader(p)
    cur = _Cursor(data, "failed to read header")
    cur.pos = 4
    try:
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise _Damaged(f"bad GGUF version: {version}")
        n_tensors, n_kv = cur.unpack("<q"), cur.unpack("<q")
        if not (0 <= n_tensors < 2**40 and 0 <= n_kv < 2**40):
            raise _Damaged("failed to read header")
        cur.reason = "failed to read key-value pairs"
        for i in range(n_kv):
            _read_kv(cur, header, i, string_arrays)
        align = header.fields.get("general.alignment")
        if align is not None and align.type != "u32":
            raise _Damaged(f"key 'general.alignment' must be of type u32 but is {align.type}")
        alignment = int(align.value) if align is not None else _DEFAULT_ALIGNMENT
        if alignment <= 0 or alignment & (alignment - 1):
            raise _Damaged(f"alignment {alignment} is not a power of 2")
        _check_tensors(cur, n_tensors, alignment)
    except _Damaged as exc:
        raise MetadataError(f"{p}: damaged or truncated GGUF ({exc})") from None
    return header


def reader_values(reader: GGUFReader) -> Mapping[str, Any]:
    """The key -> value Mapping of a GGUFReader (values read on demand), for `model_info` and friends."""

    class _Values(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            f = reader.get_field(key)
            if f is None:
                raise KeyError(key)
            return (
                field_array(f)
                if f.types and f.types[0] == GGUFValueType.ARRAY and f.types[-1] != GGUFValueType.STRING
                else f.contents()
            )

        def __iter__(self) -> Any:
            return iter(reader.fields)

        def __len__(self) -> int:
            return len(reader.fields)

    return _Values()


def gguf_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a GGUF file's first 16 MiB and its size: what heads.json records as the model's fingerprint."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(16 << 20))
    h.update(str(os.path.getsize(path)).encode())
    return "sha256-16m:" + h.hexdigest()


def has_rlkv(values: Mapping[str, Any]) -> bool:
    """Whether the file carries any rlkv.* key (the runtime then takes the rlkv path and validates them)."""
    return any(name.startswith(RLKV_PREFIX) for name in values)


def stored_perm(values: Mapping[str, Any], info: ModelInfo, path: str | os.PathLike[str]) -> np.ndarray:
    """rlkv.head_perm as an [L, H] int array (identity when absent); MetadataError unless each row permutes."""
    raw = values.get("rlkv.head_perm")
    if raw is None:
        return np.tile(np.arange(info.n_head_kv, dtype=np.int64), (info.n_layer, 1))
    perm = np.asarray(raw, dtype=np.int64).ravel()
    n = info.n_layer * info.n_head_kv
    problem = (
        _invalid("rlkv.head_perm", f"expected {n} values (n_layer x n_head_kv), got {perm.size}")
        if perm.size != n
        else _perm_problem(perm, info.n_layer, info.n_head_kv)
    )
    if problem:
        raise MetadataError(f"{path}: {problem}")
    return perm.reshape(info.n_layer, info.n_head_kv)


# ---------------------------------------------------------------- the native loader's rules, in Python

_MAX_SW = 1 << 30


def _invalid(key: str, what: str) -> str:
    """The native loader's message for a bad rlkv.* key."""
    return f"rlkv: invalid metadata: {key}: {what}"


def _cpp_float(v: float) -> str:
    """std::to_string(float): six decimals, nan/-nan/inf/-inf."""
    if math.isnan(v):
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:f}"


def _scalar(header: GGUFHeader, key: str, want: str, overrides: Mapping[str, Any]) -> tuple[Any, str | None]:
    """llama_model_loader::get_key: an override wins; else (value, None), or (None, reason) if absent/mistyped."""
    if key in overrides:
        v = overrides[key]
        return (np.float32(v).item() if want == "f32" else int(v) & 0xFFFFFFFF), None
    f = header.fields.get(key)
    if f is None:
        return None, _invalid(key, "missing")
    if f.type != want:
        return None, f"key {key} has wrong type {f.type} but expected type {want}"
    return f.value, None


def _array(header: GGUFHeader, key: str, want: tuple[str, ...], n: int) -> tuple[np.ndarray | None, str | None]:
    """An rlkv.* array of n items of one of the `want` types: (values, None), (None, None) if absent, or a reason."""
    f = header.fields.get(key)
    kind = "f32" if want == ("f32",) else "u32"
    if f is None:
        return None, None
    if f.type != "arr":
        return None, _invalid(key, f"expected an array of {kind}, got type {f.type}")
    if f.item_type not in want:
        return None, _invalid(key, f"expected an array of {kind}, got an array of {f.item_type}")
    if len(f.value) != n:
        return None, _invalid(key, f"expected {n} values (n_layer x n_head_kv), got {len(f.value)}")
    return np.asarray(f.value), None


def _scores_problem(scores: np.ndarray, n_layer: int, n_head_kv: int) -> str | None:
    """Finite and non-increasing inside each layer, checked head by head as the native loader does."""
    s = scores.reshape(n_layer, n_head_kv)
    for il in range(n_layer):
        for h in range(n_head_kv):
            if not math.isfinite(s[il, h]):
                return _invalid("rlkv.head_scores", f"layer {il} head {h} is not finite")
            if h > 0 and s[il, h] > s[il, h - 1]:
                why = "heads must be re-ordered by score; use rlkv-edge convert"
                return _invalid("rlkv.head_scores", f"layer {il} is not non-increasing at head {h} ({why})")
    return None


def _perm_problem(perm: np.ndarray, n_layer: int, n_head_kv: int) -> str | None:
    """Each layer's rlkv.head_perm row is a permutation of 0..H-1."""
    rows = perm.astype(np.int64).reshape(n_layer, n_head_kv) & 0xFFFFFFFF  # i32 is read as u32
    for il, row in enumerate(rows):
        if sorted(row.tolist()) != list(range(n_head_kv)):
            return _invalid("rlkv.head_perm", f"layer {il} is not a permutation of 0..{n_head_kv - 1}")
    return None


def rlkv_problem(header: GGUFHeader, info: ModelInfo, overrides: Mapping[str, Any] | None = None) -> str | None:
    """Why the runtime would refuse this file's rlkv.* metadata (its exact message), or None if it loads.

    The Python twin of `llama_rlkv_load_meta` (native/rlkv/rlkv-meta.cpp): the same checks in the same
    order; `overrides` are llama.cpp kv_overrides (rlkv.sparsity, rlkv.sink_size, rlkv.window_size).
    """
    if not has_rlkv(header):
        return None
    ov = overrides or {}
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        return (
            f"rlkv: architecture '{info.architecture}' is not supported with rlkv.* metadata "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    version, why = _scalar(header, "rlkv.version", "u32", ov)
    if why or version != 1:
        return why or _invalid("rlkv.version", f"unsupported version {version} (expected 1)")
    n = info.n_layer * info.n_head_kv
    scores, why = _array(header, "rlkv.head_scores", ("f32",), n)
    if why or scores is None:
        return why or _invalid("rlkv.head_scores", "missing")
    perm, why = _array(header, "rlkv.head_perm", ("u32", "i32"), n)
    for problem in (
        _scores_problem(scores, info.n_layer, info.n_head_kv),
        why,
        None if perm is None else _perm_problem(perm, info.n_layer, info.n_head_kv),
    ):
        if problem:
            return problem
    sparsity, why = _scalar(header, "rlkv.sparsity", "f32", ov)
    if why or not 0.0 <= sparsity <= 1.0:
        return why or _invalid("rlkv.sparsity", f"must be in [0, 1], got {_cpp_float(sparsity)}")
    sink, why = _scalar(header, "rlkv.sink_size", "u32", ov)
    if why:
        return why
    window, why = _scalar(header, "rlkv.window_size", "u32", ov)
    if why:
        return why
    if sink > _MAX_SW:
        return _invalid("rlkv.sink_size", f"too large: {sink}")
    if window > _MAX_SW:
        return _invalid("rlkv.window_size", f"too large: {window}")
    if window < 1:
        return _invalid("rlkv.window_size", f"must be >= 1, got {window}")
    return None


def read_rlkv_info(path: str | os.PathLike[str], header: GGUFHeader | None = None) -> dict[str, Any]:
    """Model shape and rlkv.* metadata of a GGUF, scores as stored and in the original head order;
    MetadataError with the runtime's own reason if the runtime would refuse the rlkv.* keys."""
    p = Path(path)
    header = header if header is not None else read_header(p)
    info = model_info(header, p, check_arch=False)
    out: dict[str, Any] = {
        "path": str(p),
        "architecture": info.architecture,
        "n_layer": info.n_layer,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "head_dim_k": info.head_dim_k,
        "head_dim_v": info.head_dim_v,
        "context_length": info.context_length,
        "converted": has_rlkv(header),
    }
    if not out["converted"]:
        return out
    problem = rlkv_problem(header, info)
    if problem:
        raise MetadataError(f"{p}: {problem}")
    stored = np.asarray(header["rlkv.head_scores"], dtype=np.float32).reshape(info.n_layer, info.n_head_kv)
    perm = stored_perm(header, info, p)
    original = np.zeros_like(stored)
    np.put_along_axis(original, perm, stored, axis=1)
    source = header.get("rlkv.source")
    calibration = header.get("rlkv.calibration")
    out.update(
        {
            "rlkv_version": int(header["rlkv.version"]),
            "sparsity": float(header["rlkv.sparsity"]),
            "sink_size": int(header["rlkv.sink_size"]),
            "window_size": int(header["rlkv.window_size"]),
            "source": source if isinstance(source, str) else None,
            "calibration": calibration if isinstance(calibration, str) else None,
            "head_scores": stored.tolist(),
            "head_perm": perm.tolist(),
            "scores": original.tolist(),
        }
    )
    return out

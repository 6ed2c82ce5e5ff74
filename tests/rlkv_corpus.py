"""A corpus of GGUFs with corrupted rlkv.* metadata: wrong types, lengths, NaN/inf, bad permutations,
out-of-range values, missing and duplicate keys, non-UTF-8 strings and random byte flips in the rlkv records.

Each variant rewrites the key/value section of one valid tiny GGUF (tensor infos and data are kept and
re-aligned), so whatever is wrong with a file is wrong only in its rlkv.* records.
`python tests/rlkv_corpus.py OUT_DIR` writes the corpus.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# gguf value types (gguf.h)
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}
_FMT.update({I64: "<q", F64: "<d"})
ALIGNMENT = 32

L, H = 2, 2  # the base model: tiny llama, 2 layers x 2 KV heads
SCORES = [0.9, 0.2, 0.6, 0.4]
VALID = {  # key -> (type, item type, value) of a valid file
    "rlkv.version": (U32, None, 1),
    "rlkv.head_scores": (ARR, F32, SCORES),
    "rlkv.head_perm": (ARR, U32, [0, 1, 1, 0]),
    "rlkv.sparsity": (F32, None, 0.5),
    "rlkv.sink_size": (U32, None, 4),
    "rlkv.window_size": (U32, None, 16),
    "rlkv.source": (STR, None, "corpus"),
}


def _string(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _scalar(t: int, v: object) -> bytes:
    if t == STR:
        return _string(v if isinstance(v, bytes) else str(v).encode())
    if t in (F32, F64):
        return struct.pack(_FMT[t], float(v))  # type: ignore[arg-type]
    if t == BOOL:
        return struct.pack("<?", bool(v))
    bits = {U8: 8, I8: 8, U16: 16, I16: 16, U32: 32, I32: 32, U64: 64, I64: 64}[t]
    signed = t in (I8, I16, I32, I64)
    iv = int(v)  # type: ignore[call-overload]
    iv = ((iv + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1)) if signed else iv % (1 << bits)
    return struct.pack(_FMT[t], iv)


def record(key: str, t: int, item: int | None, value: object) -> bytes:
    """One key/value record as gguf.cpp reads it."""
    out = _string(key.encode()) + struct.pack("<I", t)
    if t != ARR:
        return out + _scalar(t, value)
    items = list(value)  # type: ignore[call-overload]
    out += struct.pack("<I", item) + struct.pack("<Q", len(items))
    if item == ARR:  # nested: each item an (empty) u32 array
        return out + b"".join(struct.pack("<IQ", U32, 0) for _ in items)
    return out + b"".join(_scalar(item, v) for v in items)  # type: ignore[arg-type]


@dataclass
class _Parsed:
    """A GGUF split into what a variant rewrites and what it keeps."""

    version: int
    n_tensors: int
    kv: list[tuple[str, bytes]]  # (key, raw record) in file order
    tensor_infos: bytes
    data: bytes


def _parse(blob: bytes) -> _Parsed:
    """Split a valid GGUF (written by gguf-py) into header, records, tensor infos and data."""
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
    pos = 24

    def skip(t: int) -> None:
        nonlocal pos
        if t == STR:
            pos += 8 + struct.unpack_from("<Q", blob, pos)[0]
        elif t == ARR:
            item, n = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            for _ in range(n):
                skip(item)
        else:
            pos += struct.calcsize(_FMT[t])

    kv = []
    for _ in range(n_kv):
        start = pos
        klen = struct.unpack_from("<Q", blob, pos)[0]
        key = blob[pos + 8 : pos + 8 + klen].decode()
        pos += 8 + klen
        t = struct.unpack_from("<I", blob, pos)[0]
        pos += 4
        skip(t)
        kv.append((key, blob[start:pos]))
    start = pos
    for _ in range(n_tensors):
        pos += 8 + struct.unpack_from("<Q", blob, pos)[0]
        n_dims = struct.unpack_from("<I", blob, pos)[0]
        pos += 4 + 8 * n_dims + 4 + 8
    infos = blob[start:pos]
    data_start = -(-pos // ALIGNMENT) * ALIGNMENT
    return _Parsed(version, n_tensors, kv, infos, blob[data_start:])


def assemble(p: _Parsed, records: list[bytes]) -> bytes:
    """A GGUF with p's tensors and these key/value records."""
    head = b"GGUF" + struct.pack("<IQQ", p.version, p.n_tensors, len(records)) + b"".join(records) + p.tensor_infos
    return head + b"\0" * (-len(head) % ALIGNMENT) + p.data


def base_records(p: _Parsed) -> list[bytes]:
    """The non-rlkv records of the base file."""
    return [raw for key, raw in p.kv if not key.startswith("rlkv.")]


def _rlkv(**changes: tuple[int, int | None, object] | None) -> list[bytes]:
    """The valid rlkv records with some replaced (a tuple) or removed (None); keys use _ for ."""
    spec = dict(VALID)
    for name, value in changes.items():
        key = "rlkv." + name
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return [record(k, *v) for k, v in spec.items()]


def _variants() -> Iterator[tuple[str, list[bytes]]]:
    """(name, rlkv records) of every deterministic variant."""
    yield "valid", _rlkv()
    for key in VALID:
        yield f"missing-{key}", _rlkv(**{key[5:]: None})
        yield f"duplicate-{key}", [*_rlkv(), record(key, *VALID[key])]
    scalar_types = [U8, I8, U16, I16, U32, I32, U64, I64, F32, F64, BOOL]
    for key in ("version", "sparsity", "sink_size", "window_size"):
        for t in scalar_types:
            yield f"{key}-type-{t}", _rlkv(**{key: (t, None, 1 if key != "sparsity" else 0.5)})
        yield f"{key}-type-str", _rlkv(**{key: (STR, None, "1")})
        yield f"{key}-type-arr", _rlkv(**{key: (ARR, U32, [1])})
    for v in (0, 2, 1073741825, 2**32 - 1):
        yield f"version-{v}", _rlkv(version=(U32, None, v))
    for v in (-0.1, 1.1, float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, 1.0, -0.0, 1e-45, 0.75):
        yield f"sparsity-{v}", _rlkv(sparsity=(F32, None, v))
    for key in ("sink_size", "window_size"):
        for v in (0, 1, 2**30, 2**30 + 1, 2**32 - 1):
            yield f"{key}-{v}", _rlkv(**{key: (U32, None, v)})
    yield "sink0-window0", _rlkv(sink_size=(U32, None, 0), window_size=(U32, None, 0))
    for key, good_item, values in (("head_scores", F32, SCORES), ("head_perm", U32, [0, 1, 1, 0])):
        for t in (U32, F32, STR):
            yield f"{key}-scalar-{t}", _rlkv(**{key: (t, None, 1 if t != STR else "x")})
        for item in (U8, I8, U16, I16, U32, I32, U64, I64, F32, F64, BOOL, STR, ARR):
            if item != good_item:
                yield f"{key}-items-{item}", _rlkv(**{key: (ARR, item, [int(v) for v in values])})
        for n in (0, 1, L * H - 1, L * H + 1, 2 * L * H):
            yield f"{key}-len-{n}", _rlkv(**{key: (ARR, good_item, (values * 3)[:n])})
    for i in range(L * H):
        for v in (float("nan"), float("inf"), -float("inf")):
            s = list(SCORES)
            s[i] = v
            yield f"scores-{i}-{v}", _rlkv(head_scores=(ARR, F32, s))
    yield "scores-increasing-0", _rlkv(head_scores=(ARR, F32, [0.2, 0.9, 0.6, 0.4]))
    yield "scores-increasing-1", _rlkv(head_scores=(ARR, F32, [0.9, 0.2, 0.4, 0.6]))
    yield "scores-negative", _rlkv(head_scores=(ARR, F32, [0.9, -0.2, 0.6, -0.4]))
    yield "scores-ties", _rlkv(head_scores=(ARR, F32, [0.5, 0.5, 0.5, 0.5]))
    for perm in ([0, 0, 0, 1], [1, 1, 1, 0], [0, 2, 1, 0], [2**32 - 1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]):
        yield f"perm-{perm}", _rlkv(head_perm=(ARR, U32, perm))
    yield "perm-i32-valid", _rlkv(head_perm=(ARR, I32, [1, 0, 0, 1]))
    yield "perm-i32-negative", _rlkv(head_perm=(ARR, I32, [-1, 0, 0, 1]))
    yield "source-not-utf8", _rlkv(source=(STR, None, b"\xff\xfe\xc3("))
    yield "source-u32", _rlkv(source=(U32, None, 7))
    yield "source-long", _rlkv(source=(STR, None, "x" * 100_000))
    yield "only-head_perm", [record("rlkv.head_perm", *VALID["rlkv.head_perm"])]
    yield "only-source", [record("rlkv.source", *VALID["rlkv.source"])]
    yield "unknown-rlkv-key", [*_rlkv(), record("rlkv.extra", U32, None, 1)]


def write_corpus(base: Path, out_dir: Path, n_flips: int = 200, seed: int = 0) -> list[Path]:
    """Write every variant of `base` (a valid tiny GGUF without rlkv keys) into out_dir; their paths."""
    p = _parse(base.read_bytes())
    plain = base_records(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def write(name: str, blob: bytes) -> None:
        path = out_dir / f"{len(paths):03d}-{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.gguf"
        path.write_bytes(blob)
        paths.append(path)

    for name, rlkv in _variants():
        write(name, assemble(p, plain + rlkv))
    rng = random.Random(seed)
    valid = _rlkv()
    start = len(assemble(p, plain)[:24]) + sum(len(r) for r in plain)  # where the rlkv records begin
    size = sum(len(r) for r in valid)
    good = bytearray(assemble(p, plain + valid))
    for i in range(n_flips):
        blob = bytearray(good)
        for _ in range(rng.choice((1, 1, 2, 4))):
            at = start + rng.randrange(size)
            blob[at] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
        write(f"flip-{i}", bytes(blob))
    return paths


def corpus_base(path: Path, write_tiny: Callable[..., object]) -> Path:
    """The valid base model: tiny llama, 2 layers x 2 KV heads, no rlkv keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiny(path, arch="llama", n_layer=L, n_head=4, n_head_kv=H)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from gguf_fixtures import write_tiny_gguf

    out = Path(sys.argv[1])
    files = write_corpus(corpus_base(out / "base.gguf", write_tiny_gguf), out / "corpus")
    print(f"wrote {len(files)} files to {out / 'corpus'}")

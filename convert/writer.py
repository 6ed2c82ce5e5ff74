"""A minimal streaming GGUF v3 writer that copies metadata fields byte-for-byte.

gguf-py's GGUFWriter re-encodes every key and adds its own; here kept keys are copied as the raw bytes
of the source file, new keys are encoded with the GGUF rules, and tensor data is written one tensor at a
time (or copied from the source file in chunks), so memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType
from gguf.gguf_reader import ReaderField

GGUF_WRITE_VERSION = 3
COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorEntry:
    """One tensor-info record of the output: name, ggml ne, type and byte size."""

    name: str
    ne: tuple[int, ...]
    qtype: GGMLQuantizationType
    n_bytes: int


def tensor_nbytes(ne: Sequence[int], qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor with ggml dims ne and the given type."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(ne, dtype=np.int64))
    return n // block * size


def _pad(n: int, align: int) -> int:
    """n rounded up to a multiple of align."""
    return (n + align - 1) // align * align


def _str(s: str) -> bytes:
    """A GGUF string: u64 length + UTF-8 bytes."""
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def raw_field_bytes(field: ReaderField) -> bytes:
    """The exact bytes of a key/value record as stored in the source file."""
    return b"".join(np.asarray(p).tobytes() for p in field.parts)


def encode_kv(key: str, value: object, vtype: GGUFValueType, sub_type: GGUFValueType | None = None) -> bytes:
    """Encode a new key/value record (scalars, strings and numeric arrays)."""
    scalar = {
        GGUFValueType.UINT32: "<I",
        GGUFValueType.INT32: "<i",
        GGUFValueType.FLOAT32: "<f",
        GGUFValueType.UINT64: "<Q",
        GGUFValueType.BOOL: "<?",
    }
    arrays = {GGUFValueType.UINT32: "<u4", GGUFValueType.FLOAT32: "<f4", GGUFValueType.INT32: "<i4"}
    out = _str(key) + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.STRING:
        assert isinstance(value, str)
        return out + _str(value)
    if vtype == GGUFValueType.ARRAY:
        assert sub_type is not None
        arr = np.asarray(value).astype(arrays[sub_type]).ravel()
        return out + struct.pack("<IQ", int(sub_type), arr.size) + arr.tobytes()
    return out + struct.pack(scalar[vtype], value)


def _tensor_info(entry: TensorEntry, offset: int) -> bytes:
    """A tensor-info record: name, n_dims, ne[], type, data offset."""
    return (
        _str(entry.name)
        + struct.pack("<I", len(entry.ne))
        + struct.pack(f"<{len(entry.ne)}Q", *entry.ne)
        + struct.pack("<IQ", int(entry.qtype), offset)
    )


class GGUFStreamWriter:
    """Writes header, metadata and tensor infos up front, then tensor data in order."""

    def __init__(self, f: BinaryIO, kv_records: list[bytes], tensors: list[TensorEntry], alignment: int) -> None:
        """Write everything up to the start of tensor data."""
        self.f, self.tensors, self.alignment = f, tensors, alignment
        self.offsets: list[int] = []
        off = 0
        for t in tensors:
            self.offsets.append(off)
            off = _pad(off + t.n_bytes, alignment)
        head = [
            struct.pack("<IIQQ", GGUF_MAGIC, GGUF_WRITE_VERSION, len(tensors), len(kv_records)),
            *kv_records,
        ]
        head += [_tensor_info(t, o) for t, o in zip(tensors, self.offsets, strict=True)]
        blob = b"".join(head)
        f.write(blob + b"\0" * (_pad(len(blob), alignment) - len(blob)))
        self.data_start = _pad(len(blob), alignment)
        self.next_index = 0

    def _begin(self, name: str) -> TensorEntry:
        """Check ordering and pad to the next tensor's offset."""
        t = self.tensors[self.next_index]
        if t.name != name:
            raise RuntimeError(f"tensor {name} written out of order (expected {t.name})")
        pos = self.f.tell()
        want = self.data_start + self.offsets[self.next_index]
        if pos != want:
            self.f.write(b"\0" * (want - pos))
        return t

    def _end(self, t: TensorEntry, start: int) -> None:
        """Check the tensor's size."""
        written = self.f.tell() - start
        if written != t.n_bytes:
            raise RuntimeError(f"tensor {t.name}: wrote {written} bytes, expected {t.n_bytes}")
        self.next_index += 1

    def write_array(self, name: str, data: np.ndarray) -> None:
        """Write the next tensor's data from a numpy array."""
        t = self._begin(name)
        start = self.f.tell()
        self.f.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
        self._end(t, start)

    def copy_from(self, name: str, src: BinaryIO, offset: int) -> None:
        """Write the next tensor's data by copying its bytes from a source file in chunks."""
        t = self._begin(name)
        start = self.f.tell()
        src.seek(offset)
        left = t.n_bytes
        while left:
            chunk = src.read(min(COPY_CHUNK, left))
            if not chunk:
                raise RuntimeError(f"tensor {name}: source ended early")
            self.f.write(chunk)
            left -= len(chunk)
        self._end(t, start)

    def finish(self) -> None:
        """Check all tensors were written and pad the file end to the alignment."""
        if self.next_index != len(self.tensors):
            raise RuntimeError(f"only {self.next_index} of {len(self.tensors)} tensors written")
        pos = self.f.tell()
        self.f.write(b"\0" * (_pad(pos, self.alignment) - pos))

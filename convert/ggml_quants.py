"""ggml's own quantizer (ggml_quantize_chunk in the libggml-base we build), for re-encoding tensors.

Using the library's function rather than a numpy re-implementation means a re-encoded tensor holds exactly
the bytes llama-quantize would write, for every type the library knows (K-quants included).
"""

from __future__ import annotations

import ctypes
from functools import cache

import numpy as np
from gguf import GGMLQuantizationType

from rlkv_edge._native import LIB_DIR, NativeLibraryError


@cache
def _libggml_base() -> ctypes.CDLL:
    """libggml-base from rlkv_edge/lib with the quantization functions declared."""
    for name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (LIB_DIR / name).exists():
            lib = ctypes.CDLL(str(LIB_DIR / name))
            break
    else:
        raise NativeLibraryError(f"libggml-base is not in {LIB_DIR}; reinstall rlkv-edge")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.POINTER(ctypes.c_float),
    ]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def quantize(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Quantize a float array [..., n_per_row] row by row with ggml; returns uint8 [..., row_bytes]."""
    lib = _libggml_base()
    if lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise ValueError(f"{qtype.name} needs an importance matrix to quantize")
    src = np.ascontiguousarray(values, dtype=np.float32)
    n_per_row = src.shape[-1]
    n_rows = src.size // n_per_row
    row_bytes = int(lib.ggml_row_size(int(qtype), n_per_row))
    dst = np.empty((*src.shape[:-1], row_bytes), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(
        int(qtype), src.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), dst.ctypes.data, 0, n_rows, n_per_row, None
    )
    if written != dst.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {dst.size}")
    return dst

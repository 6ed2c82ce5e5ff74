"""What the convert tests (tests/convert/, tests/cli/) share: random head scores, and the check that a converted
GGUF is its source with the heads re-ordered, by an independent re-implementation that undoes the re-ordering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader

from rlkv_edge.heads import HeadScores
from rlkv_edge.metadata import read_rlkv_info


def random_heads(n_layer: int, n_head_kv: int, seed: int = 1, **kw: object) -> HeadScores:
    """Random scores with a tie in layer 0 (ties must keep the original order)."""
    scores = np.random.default_rng(seed).random((n_layer, n_head_kv)).astype(np.float32)
    if n_head_kv >= 3:
        scores[0, 1] = scores[0, 2] = 0.75
    return HeadScores(scores=scores, sink_size=16, window_size=32, method="test", **kw)  # type: ignore[arg-type]


def _fields_raw(r: GGUFReader) -> dict[str, bytes]:
    """Every metadata field's stored bytes, by key."""
    return {k: b"".join(np.asarray(p).tobytes() for p in f.parts) for k, f in r.fields.items()}


def rows_back(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Undo a row-block permutation: stored block j came from original block perm[j]."""
    out = np.empty_like(a.reshape(len(perm), -1))
    out[perm] = a.reshape(len(perm), -1)
    return out.reshape(a.shape)


def cols_back(a: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Undo a column-block permutation."""
    v = a.reshape(a.shape[0], len(perm), -1)
    out = np.empty_like(v)
    out[:, perm] = v
    return out.reshape(a.shape)


def undo(name: str, data: np.ndarray, perm_l: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Put one converted tensor's heads back into the original order (independent re-implementation)."""
    base = name.split(".")[2]
    if base in ("attn_q", "attn_k", "attn_v"):
        return rows_back(data, perm_l)
    if base == "attn_output" and name.endswith("weight"):
        return cols_back(data, perm_l)
    if base == "attn_qkv":
        g = n_head // n_head_kv
        flat = data.reshape(data.shape[0], -1)
        per = flat.shape[0] // (n_head_kv * (g + 2))
        q, k, v = np.split(flat, [n_head_kv * g * per, n_head_kv * (g + 1) * per])
        back = [rows_back(q, perm_l), rows_back(k, perm_l), rows_back(v, perm_l)]
        return np.concatenate(back).reshape(data.shape)
    return data


def assert_exact_reorder(src: Path, dst: Path) -> None:
    """dst = src with heads re-ordered: undoing head_perm gives src's bytes back; other data identical."""
    ra, rb = GGUFReader(src), GGUFReader(dst)
    info = read_rlkv_info(dst)
    perm = np.asarray(info["head_perm"])
    stored = np.asarray(info["head_scores"], dtype=np.float32)
    assert np.all(np.diff(stored, axis=1) <= 0), "scores must be non-increasing inside a layer"
    fa, fb = _fields_raw(ra), _fields_raw(rb)
    kept = {k: v for k, v in fb.items() if not k.startswith("rlkv.") and not k.startswith("GGUF.kv_count")}
    assert kept == {k: v for k, v in fa.items() if not k.startswith("rlkv.") and k != "GGUF.kv_count"}
    assert list(kept) == [k for k in fa if not k.startswith("rlkv.") and k != "GGUF.kv_count"]  # same order
    assert [t.name for t in ra.tensors] == [t.name for t in rb.tensors]
    for ta, tb in zip(ra.tensors, rb.tensors, strict=True):
        assert ta.tensor_type == tb.tensor_type and list(ta.shape) == list(tb.shape), ta.name
        layer = int(ta.name.split(".")[1]) if ta.name.startswith("blk.") else -1
        data = np.asarray(tb.data)
        if layer >= 0:
            data = undo(ta.name, data, perm[layer], info["n_head"], info["n_head_kv"])
        assert data.tobytes() == np.asarray(ta.data).tobytes(), ta.name

"""`rlkv-edge convert`: exact head re-ordering per architecture (llama, qwen2 biases, qwen3 q/k norms,
mistral3, fused attn_qkv) and tensor type: byte moves that undo exactly, ties kept in order, attention output
unchanged, nothing moved when the scores are already sorted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf_fixtures import write_tiny_gguf
from reference import attention
from reorder_checks import assert_exact_reorder, random_heads

from rlkv_edge.convert import convert_gguf
from rlkv_edge.errors import RlkvError
from rlkv_edge.heads import HeadScores
from rlkv_edge.metadata import read_rlkv_info


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1])
@pytest.mark.parametrize(
    ("arch", "extra"),
    [("llama", {}), ("qwen2", {"bias": True}), ("qwen3", {"qk_norm": True}), ("mistral3", {})],
)
def test_reorder_is_exact(tmp_path: Path, arch: str, extra: dict[str, bool], qtype: T) -> None:
    """Every head-dependent tensor is re-ordered by byte moves and undoes exactly; the rest is untouched."""
    src = write_tiny_gguf(
        tmp_path / "m.gguf", arch=arch, n_layer=3, n_head=6, n_head_kv=3, head_dim=32, ftype=qtype.name, **extra
    ).path
    heads = random_heads(3, 3)
    report = convert_gguf(src, heads, tmp_path / "out.gguf", progress=False)
    assert report.reencoded == [] and report.permuted_tensors
    assert_exact_reorder(src, tmp_path / "out.gguf")


def test_ties_keep_original_order(tmp_path: Path) -> None:
    """Equal scores keep their original relative order (stable sort)."""
    src = write_tiny_gguf(tmp_path / "m.gguf", n_layer=1, n_head=4, n_head_kv=4).path
    heads = HeadScores(scores=np.array([[0.5, 0.9, 0.5, 0.9]]))
    convert_gguf(src, heads, tmp_path / "o.gguf", progress=False)
    info = read_rlkv_info(tmp_path / "o.gguf")
    assert info["head_perm"] == [[1, 3, 0, 2]]
    assert info["head_scores"] == [[pytest.approx(0.9), pytest.approx(0.9), 0.5, 0.5]]


def _attention(r: GGUFReader, layer: int, x: np.ndarray, n_head: int, n_head_kv: int, d: int) -> np.ndarray:
    """Per-query-head outputs [n_head, T, d] of a causal GQA attention layer in float64, from F32 tensors (the
    attention itself is tests/reference.py's)."""
    t = {tt.name: np.asarray(tt.data, dtype=np.float64) for tt in r.tensors}
    p = f"blk.{layer}."
    q = x @ t[p + "attn_q.weight"].T + t.get(p + "attn_q.bias", 0.0)
    k = x @ t[p + "attn_k.weight"].T + t.get(p + "attn_k.bias", 0.0)
    v = x @ t[p + "attn_v.weight"].T + t.get(p + "attn_v.bias", 0.0)
    n = x.shape[0]
    causal = np.broadcast_to(np.tril(np.ones((n, n), dtype=bool)), (n_head_kv, n, n))
    out = attention(q.reshape(n, n_head, d), k.reshape(n, n_head_kv, d), v.reshape(n, n_head_kv, d), causal)
    return out.transpose(1, 0, 2)


def test_attention_output_unchanged(tmp_path: Path) -> None:
    """A numpy GQA attention forward from the converted F32 tensors equals the original's."""
    n_head, n_kv, d = 6, 3, 16
    src = write_tiny_gguf(
        tmp_path / "m.gguf", arch="qwen2", n_layer=2, n_head=n_head, n_head_kv=n_kv, head_dim=d, bias=True
    ).path
    heads = random_heads(2, n_kv, seed=4)
    convert_gguf(src, heads, tmp_path / "o.gguf", progress=False)
    ra, rb = GGUFReader(src), GGUFReader(tmp_path / "o.gguf")
    perm = np.asarray(read_rlkv_info(tmp_path / "o.gguf")["head_perm"])
    x = np.random.default_rng(0).standard_normal((7, n_head * d))
    g = n_head // n_kv
    for layer in range(2):
        ha, hb = _attention(ra, layer, x, n_head, n_kv, d), _attention(rb, layer, x, n_head, n_kv, d)
        q_perm = (perm[layer][:, None] * g + np.arange(g)).ravel()
        np.testing.assert_array_equal(hb, ha[q_perm])  # each query head moved with its KV head, bitwise
        wo_a = np.asarray(ra.tensors[[t.name for t in ra.tensors].index(f"blk.{layer}.attn_output.weight")].data)
        wo_b = np.asarray(rb.tensors[[t.name for t in rb.tensors].index(f"blk.{layer}.attn_output.weight")].data)
        ya = ha.transpose(1, 0, 2).reshape(7, -1) @ wo_a.T.astype(np.float64)
        yb = hb.transpose(1, 0, 2).reshape(7, -1) @ wo_b.T.astype(np.float64)
        np.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-12)


def test_fused_qkv_is_exact(tmp_path: Path) -> None:
    """A fused attn_qkv (weight and bias) is re-ordered segment-wise."""
    src = write_tiny_gguf(
        tmp_path / "m.gguf",
        n_layer=2,
        n_head=8,
        n_head_kv=4,
        head_dim=32,
        ftype="Q8_0",
        fused_qkv=True,
        bias=True,
    ).path
    report = convert_gguf(src, random_heads(2, 4), tmp_path / "o.gguf", progress=False)
    assert any("attn_qkv" in n for n in report.permuted_tensors)
    assert_exact_reorder(src, tmp_path / "o.gguf")


def test_identity_order_copies_bytes(tmp_path: Path) -> None:
    """When scores are already sorted no tensor changes and nothing is re-encoded."""
    # attn_output Q8_0 with g*D = 48 would need F16 if anything moved
    src = write_tiny_gguf(tmp_path / "m.gguf", n_head=6, n_head_kv=2, attn_output_type="Q8_0").path
    report = convert_gguf(
        src, HeadScores(scores=np.array([[0.9, 0.1], [0.5, 0.5]])), tmp_path / "o.gguf", progress=False
    )
    assert report.permuted_tensors == [] and report.reencoded == []
    ra, rb = GGUFReader(src), GGUFReader(tmp_path / "o.gguf")
    for ta, tb in zip(ra.tensors, rb.tensors, strict=True):
        assert np.asarray(ta.data).tobytes() == np.asarray(tb.data).tobytes()


def test_head_count_kv_array(tmp_path: Path) -> None:
    """A per-layer head_count_kv array is fine when uniform and refused otherwise."""
    ok = write_tiny_gguf(tmp_path / "ok.gguf", n_layer=2, head_count_kv=[2, 2]).path
    convert_gguf(ok, random_heads(2, 2), tmp_path / "o.gguf", progress=False)
    assert_exact_reorder(ok, tmp_path / "o.gguf")
    bad = write_tiny_gguf(tmp_path / "bad.gguf", n_layer=2, head_count_kv=[2, 1]).path
    with pytest.raises(RlkvError, match="differs between layers"):
        convert_gguf(bad, random_heads(2, 2), tmp_path / "o2.gguf", progress=False)

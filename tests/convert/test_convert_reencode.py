"""`rlkv-edge convert`: an attn_output whose head column blocks split its quant blocks is re-encoded (K-quants to
Q8_0, Q8_0/Q4_0 to F16), reported, and stays within the new type's rounding error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants as gq
from gguf_fixtures import write_tiny_gguf
from reorder_checks import cols_back

from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores
from rlkv_edge.metadata import read_rlkv_info


def _dequant(r: GGUFReader, name: str) -> tuple[np.ndarray, T]:
    """A tensor's float values and type."""
    t = next(tt for tt in r.tensors if tt.name == name)
    return gq.dequantize(np.asarray(t.data), t.tensor_type), T(t.tensor_type)


@pytest.mark.parametrize(
    ("kw", "old", "new"),
    [
        # g*D = 2*64 = 128: not a multiple of 256 (K-quant blocks) but of 32 -> Q8_0
        ({"n_head": 8, "n_head_kv": 4, "head_dim": 64, "attn_output_type": "Q4_K"}, T.Q4_K, T.Q8_0),
        ({"n_head": 8, "n_head_kv": 4, "head_dim": 64, "attn_output_type": "Q6_K"}, T.Q6_K, T.Q8_0),
        # g*D = 3*16 = 48: not a multiple of 32 -> F16
        ({"n_head": 6, "n_head_kv": 2, "head_dim": 16, "attn_output_type": "Q8_0"}, T.Q8_0, T.F16),
        ({"n_head": 6, "n_head_kv": 2, "head_dim": 16, "attn_output_type": "Q4_0"}, T.Q4_0, T.F16),
    ],
)
def test_reencode_when_columns_split_blocks(tmp_path: Path, kw: dict[str, object], old: T, new: T) -> None:
    """attn_output whose column blocks split quant blocks is re-encoded, reported, and stays close."""
    src = write_tiny_gguf(tmp_path / "m.gguf", n_layer=2, ftype="Q8_0", **kw).path  # type: ignore[arg-type]
    heads = HeadScores(scores=np.array([[0.1, 0.2, 0.3, 0.9][: kw["n_head_kv"]]] * 2))  # type: ignore[misc]
    report = convert_gguf(src, heads, tmp_path / "o.gguf", progress=False)
    names = sorted(r.name for r in report.reencoded)
    assert names == ["blk.0.attn_output.weight", "blk.1.attn_output.weight"]
    assert all((r.old_type, r.new_type) == (old.name, new.name) for r in report.reencoded)
    assert "re-encoded blk.0.attn_output.weight" in report.summary()
    ra, rb = GGUFReader(src), GGUFReader(tmp_path / "o.gguf")
    perm = np.asarray(read_rlkv_info(tmp_path / "o.gguf")["head_perm"])
    for layer in range(2):
        a, ta = _dequant(ra, f"blk.{layer}.attn_output.weight")
        b, tb = _dequant(rb, f"blk.{layer}.attn_output.weight")
        assert (ta, tb) == (old, new)
        b = cols_back(b, perm[layer])
        scale = np.abs(a).max()
        tol = scale / 127 if new == T.Q8_0 else scale * 2**-10  # Q8_0 / F16 rounding error
        np.testing.assert_allclose(b, a, rtol=0, atol=tol)
    sizes = {t.name: (int(t.n_bytes), t.tensor_type) for t in rb.tensors}
    assert all(sizes[r.name][0] == r.new_bytes for r in report.reencoded)
    assert report.dst_bytes - report.src_bytes >= sum(r.new_bytes - r.old_bytes for r in report.reencoded) - 64

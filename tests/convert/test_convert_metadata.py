"""`rlkv-edge convert`: the rlkv.* keys it writes (types, values, overrides), re-converting a converted file, the
default output name, and inputs it refuses (per-layer head counts that differ, one shard of a split GGUF)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType
from gguf_fixtures import write_tiny_gguf
from reorder_checks import assert_exact_reorder, random_heads

from rlkv_edge.convert import convert_gguf, default_output
from rlkv_edge.errors import RlkvError
from rlkv_edge.heads import HeadScores


def test_rlkv_metadata(tmp_path: Path) -> None:
    """rlkv.* keys have the contract's types and values; overrides of s, S, W are written."""
    src = write_tiny_gguf(
        tmp_path / "m.gguf",
        n_layer=2,
        n_head=4,
        n_head_kv=2,
        name="tiny",
        extra=lambda w: w.add_float32("test.some_float", 0.125),
    ).path
    heads = HeadScores(scores=np.array([[0.2, 0.4], [1.5, 0.0]]), sink_size=8, window_size=24, method="rlkv")
    convert_gguf(src, heads, tmp_path / "o.gguf", sparsity=0.25, window=48, progress=False)
    r = GGUFReader(tmp_path / "o.gguf")
    types = {k: (f.types[0], f.types[-1]) for k, f in r.fields.items() if k.startswith("rlkv.")}
    assert types == {
        "rlkv.version": (GGUFValueType.UINT32, GGUFValueType.UINT32),
        "rlkv.head_scores": (GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        "rlkv.head_perm": (GGUFValueType.ARRAY, GGUFValueType.UINT32),
        "rlkv.sparsity": (GGUFValueType.FLOAT32, GGUFValueType.FLOAT32),
        "rlkv.sink_size": (GGUFValueType.UINT32, GGUFValueType.UINT32),
        "rlkv.window_size": (GGUFValueType.UINT32, GGUFValueType.UINT32),
        "rlkv.source": (GGUFValueType.STRING, GGUFValueType.STRING),
    }
    get = lambda k: r.fields[k].contents()  # noqa: E731
    assert get("rlkv.version") == 1
    assert get("rlkv.head_scores") == [pytest.approx(0.4), pytest.approx(0.2), 1.0, 0.0]
    assert get("rlkv.head_perm") == [1, 0, 0, 1]
    assert get("rlkv.sparsity") == 0.25 and get("rlkv.sink_size") == 8 and get("rlkv.window_size") == 48
    assert json.loads(get("rlkv.source"))["method"] == "rlkv"
    assert r.fields["test.some_float"].contents() == 0.125 and r.fields["general.name"].contents() == "tiny"


def test_already_converted_needs_force(tmp_path: Path) -> None:
    """A converted file is refused without force; with force the result equals converting the original."""
    src = write_tiny_gguf(
        tmp_path / "m.gguf", n_layer=2, n_head=8, n_head_kv=4, head_dim=16, ftype="Q8_0", bias=True
    ).path
    first, second = random_heads(2, 4, seed=1), random_heads(2, 4, seed=2)
    convert_gguf(src, first, tmp_path / "a.gguf", progress=False)
    with pytest.raises(RlkvError, match="already converted"):
        convert_gguf(tmp_path / "a.gguf", second, tmp_path / "b.gguf", progress=False)
    report = convert_gguf(tmp_path / "a.gguf", second, tmp_path / "b.gguf", force=True, progress=False)
    assert report.reconverted
    convert_gguf(src, second, tmp_path / "c.gguf", progress=False)
    rb, rc = GGUFReader(tmp_path / "b.gguf"), GGUFReader(tmp_path / "c.gguf")
    for tb, tc in zip(rb.tensors, rc.tensors, strict=True):
        assert np.asarray(tb.data).tobytes() == np.asarray(tc.data).tobytes(), tb.name
    for key in ("rlkv.head_perm", "rlkv.head_scores", "rlkv.sparsity"):
        assert rb.fields[key].contents() == rc.fields[key].contents()
    assert_exact_reorder(src, tmp_path / "b.gguf")


def test_split_gguf_refused(tmp_path: Path) -> None:
    """One shard of a split GGUF is refused (its tensors are spread over several files)."""
    src = write_tiny_gguf(tmp_path / "m-00001-of-00002.gguf").path
    r = GGUFReader(src)
    kv = [b"".join(np.asarray(p).tobytes() for p in f.parts) for k, f in r.fields.items() if not k.startswith("GGUF.")]
    from rlkv_edge.convert.writer import GGUFStreamWriter, TensorEntry, encode_kv

    kv.append(encode_kv("split.count", 2, GGUFValueType.UINT32))
    entries = [TensorEntry(t.name, tuple(int(d) for d in t.shape), T(t.tensor_type), int(t.n_bytes)) for t in r.tensors]
    with open(tmp_path / "split.gguf", "wb") as f:
        w = GGUFStreamWriter(f, kv, entries, int(r.alignment))
        for t in r.tensors:
            w.write_array(t.name, np.asarray(t.data))
        w.finish()
    with pytest.raises(RlkvError, match="split GGUF"):
        convert_gguf(tmp_path / "split.gguf", random_heads(2, 2), tmp_path / "o.gguf", progress=False)


def test_default_output_name(tmp_path: Path) -> None:
    """<stem>.rlkv.gguf beside the input."""
    assert default_output(tmp_path / "Model.Q4_K_M.gguf") == tmp_path / "Model.Q4_K_M.rlkv.gguf"
    assert default_output(tmp_path / "m.rlkv.gguf") == tmp_path / "m.rlkv.gguf"

"""`rlkv-edge convert`'s GGUF writer: an interrupted write leaves nothing behind, and the output parses with
gguf-py with every tensor aligned."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf_fixtures import write_tiny_gguf
from reorder_checks import random_heads

from rlkv_edge.convert import convert_gguf


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure in the middle of writing removes the temp file and leaves no output."""
    src = write_tiny_gguf(tmp_path / "m.gguf").path
    import rlkv_edge.convert.converter as conv

    def boom(*_: object) -> np.ndarray:
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "_tensor_data", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(src, random_heads(2, 2), tmp_path / "o.gguf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_writer_layout_matches_gguf_py(tmp_path: Path) -> None:
    """The output header parses with gguf-py and every tensor offset is aligned."""
    src = write_tiny_gguf(tmp_path / "m.gguf", ftype="Q4_0").path
    convert_gguf(src, random_heads(2, 2), tmp_path / "o.gguf", progress=False)
    r = GGUFReader(tmp_path / "o.gguf")
    assert all(t.data_offset % r.alignment == 0 for t in r.tensors)
    with open(tmp_path / "o.gguf", "rb") as f:
        magic, version = struct.unpack("<4sI", f.read(8))
    assert (magic, version) == (b"GGUF", 3)
    assert os.path.getsize(tmp_path / "o.gguf") % r.alignment == 0

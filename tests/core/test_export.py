"""Head patterns go out as they come in (issue 29 item 6): export to DuoAttention's full_attention_heads.tsv and
RLKV's adapter_weights.tsv (+ config.json), import back: identical scores, ranking, F_l and S/W."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest

from rlkv_edge.errors import HeadsFileError
from rlkv_edge.heads import EXPORT_FILES, HeadScores, export_pattern, load_heads
from rlkv_edge.masks import full_head_mask, full_heads_per_layer

SPARSITIES = (0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0)


def _ranking(scores: np.ndarray) -> list[int]:
    """Heads in the mask rule's order: score descending, then (layer, head)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.lexsort((np.arange(flat.size), -flat)).tolist()


def _shipped() -> HeadScores:
    return load_heads(Path(str(importlib.resources.files("rlkv_edge") / "data" / "default_heads.json")))


def _cases() -> list[tuple[str, HeadScores]]:
    rng = np.random.default_rng(0)
    ties = rng.choice([0.0, 0.25, 1.0], size=(7, 5)).astype(np.float32)  # many ties: layer order decides
    fine = rng.random((32, 8)).astype(np.float32) * np.float32(1e-3)  # scores that differ in the last bits
    return [
        ("shipped", _shipped()),
        ("ties", HeadScores(ties, sink_size=4, window_size=16, method="t")),
        ("fine", HeadScores(fine, sink_size=0, window_size=1024, method="t")),
    ]


@pytest.mark.parametrize("fmt", sorted(EXPORT_FILES))
@pytest.mark.parametrize(("name", "heads"), _cases(), ids=[n for n, _ in _cases()])
def test_export_import_round_trip(tmp_path: Path, fmt: str, name: str, heads: HeadScores) -> None:
    """Exact inverse: same float32 scores, so the same ranking and F_l at every sparsity, and the same S/W."""
    tsv, config = export_pattern(heads, fmt, tmp_path / "out")
    assert tsv.name == EXPORT_FILES[fmt] and config.name == "config.json"
    for back in (load_heads(tsv), load_heads(tmp_path / "out")):  # the file, or the folder holding it
        np.testing.assert_array_equal(back.scores, heads.scores)
        assert (back.sink_size, back.window_size) == (heads.sink_size, heads.window_size)
        assert _ranking(back.scores) == _ranking(heads.scores)
        for s in SPARSITIES:
            assert full_heads_per_layer(back.scores, s).tolist() == full_heads_per_layer(heads.scores, s).tolist()
            assert (full_head_mask(back.scores, s) == full_head_mask(heads.scores, s)).all()


def test_export_to_a_tsv_path_and_config_guard(tmp_path: Path) -> None:
    """A *.tsv path writes config.json beside it; another heads file's config.json there is kept without force."""
    heads = _shipped()
    tsv, _ = export_pattern(heads, "rlkv", tmp_path / "gates.tsv")
    assert tsv == tmp_path / "gates.tsv" and load_heads(tsv).window_size == heads.window_size
    export_pattern(heads, "rlkv", tmp_path / "gates.tsv")  # the same again: fine
    other = HeadScores(heads.scores, sink_size=4, window_size=16)
    with pytest.raises(HeadsFileError, match=r"config\.json exists and would be replaced"):
        export_pattern(other, "duoattention", tmp_path / "x.tsv")
    export_pattern(other, "duoattention", tmp_path / "x.tsv", force=True)
    assert load_heads(tmp_path / "x.tsv").window_size == 16
    with pytest.raises(HeadsFileError, match="no such folder"):
        export_pattern(heads, "rlkv", tmp_path / "missing" / "g.tsv")

"""bench/cross_table.py's analysis: ranks per evaluation, Spearman correlation, full-set overlap, rendering."""

from __future__ import annotations

import numpy as np
import pytest
from bench_scripts import bench_module


@pytest.fixture(scope="module")
def cross():  # type: ignore[no-untyped-def]
    """bench/cross_table.py as a module (it imports bench/showcase.py by name)."""
    with bench_module("cross_table") as mod:
        yield mod


def test_ranks_per_evaluation_with_ties(cross) -> None:  # type: ignore[no-untyped-def]
    """Higher accuracy and lower KL rank first; ties share their mean rank; full / all-local rows get none."""
    Row = cross.Row
    rows = [
        Row("full cache", 0.0, 0.9, 1.0, 0.0, 1.0),
        Row("a", 0.5, 0.8, 0.9, 0.02, 0.9),
        Row("b", 0.5, 0.8, 0.5, 0.05, 0.8),
        Row("c", 0.5, 0.4, 0.7, 0.01, 0.95),
        Row("all local", 1.0, 0.1, 0.0, 0.5, 0.6),
    ]
    cross.add_ranks(rows)
    a, b, c = rows[1:4]
    assert (a.ranks["reasoning"], b.ranks["reasoning"], c.ranks["reasoning"]) == (1.5, 1.5, 3.0)
    assert (a.ranks["recall"], b.ranks["recall"], c.ranks["recall"]) == (1.0, 3.0, 2.0)
    assert (a.ranks["kl"], b.ranks["kl"], c.ranks["kl"]) == (2.0, 3.0, 1.0)
    assert a.ranks["mean"] == pytest.approx(1.5) and not rows[0].ranks and not rows[4].ranks
    table = cross.markdown(
        {"rows": [r.__dict__ for r in rows], "sink": 64, "window": 256, "n_reasoning": 2, "n_recall": 2,
         "text": "GPL-3", "text_tokens": 10, "threads": 2, "machine": "x", "similarity": []}
    )  # fmt: skip
    assert "| 0.5 | a | 80.0% | 90.0% | 0.0200 | 90.0% | 1.5/1/2 | 1.50 |" in table


def test_spearman_and_overlap(cross) -> None:  # type: ignore[no-untyped-def]
    """Identical tables correlate 1 and overlap fully; reversed ones −1 and not at all."""
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert cross.spearman(a, a) == pytest.approx(1.0) and cross.spearman(a, -a) == pytest.approx(-1.0)
    sim = cross.similarity({"x": a, "y": a, "z": -a}, ["x", "y", "z"], s=0.5)
    by = {(d["a"], d["b"]): d for d in sim}
    assert by[("x", "y")]["jaccard"] == 1.0 and by[("x", "z")]["jaccard"] == 0.0

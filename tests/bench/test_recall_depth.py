"""bench/recall_depth.py's prompt: every fact lies at least --gap tokens before the questions, at its stated place."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import bench_module


@pytest.fixture(scope="module")
def recall():  # type: ignore[no-untyped-def]
    """bench/recall_depth.py as a module (it imports bench/long_front.py and bench/record.py by name)."""
    with bench_module("recall_depth") as mod:
        yield mod


class ByteTokenizer:
    """One token per byte: enough to check where build_prompt puts things."""

    def tokenize(self, text: bytes, add_bos: bool = False) -> list[int]:
        return list(text)


@pytest.mark.parametrize(("n_tokens", "n_facts", "gap"), [(6000, 5, 3000), (3000, 12, 1000)])
def test_facts_sit_at_their_position_and_past_the_gap(recall, n_tokens: int, n_facts: int, gap: int) -> None:  # type: ignore[no-untyped-def]
    if not Path("/usr/share/common-licenses/GPL-3").is_file():
        pytest.skip("needs the Debian licence texts in /usr/share/common-licenses")
    tokens, facts = recall.build_prompt(ByteTokenizer(), n_tokens, n_facts, gap, seed=3)
    assert len(tokens) == n_tokens
    assert len({f["name"] for f in facts}) == n_facts
    for f in facts:
        piece = list(recall.fact(f["name"], f["code"]).encode())
        assert tokens[f["position"] : f["position"] + len(piece)] == piece
        assert f["distance"] == n_tokens - f["position"] >= gap
    assert facts == sorted(facts, key=lambda f: f["position"])

"""Strict rankings: the clamp keeps what it cuts off, and scores order heads held at 0 or 1 by it."""

from __future__ import annotations

import numpy as np
import torch
from tiny_models import tiny_model

from rlkv_edge.masks import boundary_tie
from rlkv_edge.train.gates import (
    clamp_gates,
    gate_parameters,
    get_excess,
    install_gates,
    load_gates,
    save_gates,
    set_gates,
    strict_scores,
)


def test_clamp_accumulates_excess_and_checkpoints_keep_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two clamps add up what they cut off; save/load round-trips gates and excess."""
    model = tiny_model("llama")
    install_gates(model, sink=2, window=4)
    for _ in range(2):
        set_gates(model, np.array([[1.25, 0.5], [-0.5, 1.0]]))
        clamp_gates(model)
    np.testing.assert_allclose(get_excess(model), [[0.5, 0.0], [-1.0, 0.0]])
    save_gates(model, tmp_path)
    other = tiny_model("llama")
    install_gates(other, sink=2, window=4)
    load_gates(other, tmp_path)
    np.testing.assert_allclose(get_excess(other), get_excess(model))
    assert all(torch.equal(a, b) for a, b in zip(gate_parameters(model), gate_parameters(other), strict=True))


def test_strict_scores_order_by_gate_then_excess() -> None:
    """Inner gates are kept; heads at 1 rank above them by excess, heads at 0 below them; true ties stay."""
    gates = np.array([[1.0, 1.0, 0.7, 0.2], [0.0, 0.0, 1.0, 1.0]])
    excess = np.array([[0.3, 0.1, 0.0, 0.0], [-0.2, -0.5, 0.2, 0.25]])
    s = strict_scores(gates, excess)
    assert s.dtype == np.float32 and s.min() >= 0 and s.max() == 1.0
    assert s[0, 2] == np.float32(0.7) and s[0, 3] == np.float32(0.2)
    assert s[0, 0] == 1.0 > s[1, 3] > s[1, 2] > s[0, 1] > 0.7  # excess 0.3 > 0.25 > 0.2 > 0.1
    assert 0.2 > s[1, 0] > s[1, 1] == 0.0
    assert boundary_tie(gates, 0.75) == (4, 2, 1.0) and boundary_tie(s, 0.75) is None  # the raw gates tie
    tied = strict_scores(np.ones((1, 2)), np.zeros((1, 2)))  # equal (gate, excess): no evidence, still a tie
    assert boundary_tie(tied, 0.5) == (2, 1, 1.0)


def test_strict_scores_without_inner_gates() -> None:
    """All gates at 1 (or 0): spread over (0.5, 1] (or [0, 0.5)) by excess."""
    s = strict_scores(np.ones((1, 3)), np.array([[0.0, 0.2, 0.1]]))
    assert s.tolist() == [[np.float32(0.5 + 0.5 / 3), 1.0, np.float32(0.5 + 1 / 3)]]
    z = strict_scores(np.zeros((1, 2)), np.array([[-0.1, -0.2]]))
    assert z.tolist() == [[0.25, 0.0]]

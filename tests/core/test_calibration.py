"""rlkv_edge/calibration.py: the stored measurements and --kv-budget's choice among them."""

from __future__ import annotations

import pytest

from rlkv_edge.calibration import Calibration, CalibrationPoint, choose_config, grid
from rlkv_edge.errors import BudgetError, MetadataError
from rlkv_edge.memory import kv_memory

INFO = {
    "n_layer": 2,
    "n_head_kv": 2,
    "head_dim_k": 64,
    "head_dim_v": 64,
    "head_scores": [[0.9, 0.2], [0.5, 0.1]],
    "sink_size": 4,
    "window_size": 16,
    "converted": True,
}
POINTS = [
    CalibrationPoint("f16", "f16", 0.0, 4, 16, 0.0, 1.0),
    CalibrationPoint("q8_0", "q8_0", 0.0, 4, 16, 0.004, 0.97),
    CalibrationPoint("q4_0", "q4_0", 0.0, 4, 16, 0.08, 0.86),
    CalibrationPoint("f16", "f16", 0.5, 4, 16, 0.20, 0.75),
    CalibrationPoint("q8_0", "q8_0", 0.5, 64, 256, 0.03, 0.90),
    CalibrationPoint("q8_0", "q8_0", 0.75, 64, 256, 0.06, 0.85),
    CalibrationPoint("f16", "f16", 1.0, 4, 16, 0.50, 0.60),
]
CAL = Calibration(n_tokens=1024, text="t.txt", points=POINTS)
N_CTX = 8192


def _bytes(p: CalibrationPoint) -> int:
    return kv_memory(INFO, p.sparsity, N_CTX, p.type_k, p.type_v, sink=p.sink, window=p.window)["kv_bytes_compressed"]


def test_json_round_trip_and_bad_json() -> None:
    assert Calibration.from_json(CAL.to_json()) == CAL
    for bad in ("{", '{"version": 9, "points": []}', '{"version": 1, "n_tokens": 5, "points": [{"x": 1}]}'):
        with pytest.raises(MetadataError, match="invalid calibration"):
            Calibration.from_json(bad)


def test_choice_is_the_lowest_kl_point_that_fits() -> None:
    sizes = {p: _bytes(p) for p in POINTS}
    for budget in sorted(set(sizes.values())):
        fitting = [p for p in POINTS if sizes[p] <= budget]
        best = min(fitting, key=lambda p: (p.mean_kl, sizes[p]))
        c = choose_config(INFO, CAL, budget, N_CTX)
        assert (c.type_k, c.type_v, c.sparsity, c.sink, c.window) == (
            best.type_k,
            best.type_v,
            best.sparsity,
            best.sink,
            best.window,
        )
        assert c.kv_bytes == sizes[best] <= budget and c.mean_kl == best.mean_kl
        assert "KL" in c.describe() and f"K {best.type_k}" in c.describe()
    # below q4_0's memory the rlkv + q8_0 point wins over all-local f16 (lower KL)
    q4 = sizes[POINTS[2]]
    c = choose_config(INFO, CAL, q4 - 1, N_CTX)
    assert c.mean_kl < 0.5 and c.kv_bytes < q4


def test_fixed_flags_restrict_the_choice_and_nothing_fits() -> None:
    budget = _bytes(POINTS[0])  # everything fits
    assert choose_config(INFO, CAL, budget, N_CTX).type_k == "f16"
    c = choose_config(INFO, CAL, budget, N_CTX, type_k="q4_0", type_v="q4_0")
    assert (c.type_k, c.sparsity) == ("q4_0", 0.0)
    c = choose_config(INFO, CAL, budget, N_CTX, window=256)
    assert (c.window, c.mean_kl) == (256, 0.03)
    with pytest.raises(BudgetError, match="no calibrated configuration fits"):
        choose_config(INFO, CAL, 1024, N_CTX)


def test_grid_measures_every_type_at_s0_and_the_files_sink_window() -> None:
    g = grid(4, 16)
    at_s0 = [("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")]
    assert [p for p in g if p[2] == 0.0] == [(k, v, 0.0, 4, 16) for k, v in at_s0]
    assert ("q8_0", "q8_0", 0.5, 4, 16) in g and ("q8_0", "q4_0", 0.5, 64, 1024) in g and len(g) == len(set(g))


def test_a_short_calibration_is_said() -> None:
    budget = _bytes(POINTS[0])
    assert "much shorter text" not in choose_config(INFO, CAL, budget, 2048).describe()  # 1024-token calibration
    assert "much shorter text" in choose_config(INFO, CAL, budget, N_CTX).describe()


def test_config_warnings() -> None:
    """One line each: context above the trained one, most layers without a full head, a dominated point."""
    from rlkv_edge.calibration import config_warnings, dominating

    info = {**INFO, "context_length": 4096, "sparsity": 0.5}
    # f16 at s=0.5 S4/W16 (KL 0.20): some calibrated point needs no more memory at 8k and has a lower KL
    f16_half = POINTS[3]
    better = dominating(CAL, info, N_CTX, f16_half)
    assert better is not None and better.mean_kl < f16_half.mean_kl and _bytes(better) <= _bytes(f16_half)
    lines = config_warnings(info, CAL, N_CTX, sparsity=0.5, sink=4, window=16)
    assert len(lines) == 2, lines
    assert lines[0].startswith("context 8192 is above the model's trained context (4096 tokens)")
    assert lines[1].startswith("this configuration (K f16, V f16, s=0.5, S4/W16; calibrated KL 0.2) is dominated: ")
    # s = 0.9 leaves 0 of 4 heads full: both layers only sink + window
    lines = config_warnings(info, None, 2048, sparsity=0.9, sink=None, window=None)
    assert lines == [
        "sparsity 0.9 leaves 2 of 2 layers without a full head (0 of 4 heads full): most layers see only sink + "
        "window tokens, where quality falls off (lower the sparsity or raise the budget)"
    ]
    assert config_warnings(info, CAL, 2048, sparsity=0.0, sink=4, window=16) == []  # f16 full: the best KL
    assert config_warnings({"context_length": 4096}, None, 2048, sparsity=None, sink=None, window=None) == []

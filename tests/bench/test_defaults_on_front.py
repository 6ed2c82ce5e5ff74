"""The defaults a named model runs with (rlkv_edge.catalog.Defaults: s, S, W and cache types) are a measured point
of its front JSON that no other measured point dominates in (KV bytes, KL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkv_edge.catalog import CATALOG, CatalogModel

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def points(names: tuple[str, ...]) -> list[dict]:
    """Every point of the named front JSONs."""
    return [p for n in names for p in json.loads((RESULTS / f"{n}.json").read_text())["points"]]


def dominated_by(p: dict, others: list[dict]) -> list[str]:
    """Labels of the points with no more KV bytes and no more KL, and less of one."""
    return [
        o["config"]["label"]
        for o in others
        if o["kv_bytes"] <= p["kv_bytes"]
        and o["mean_kl"] <= p["mean_kl"]
        and (o["kv_bytes"] < p["kv_bytes"] or o["mean_kl"] < p["mean_kl"])
    ]


@pytest.mark.parametrize("model", [m for m in CATALOG if m.defaults], ids=lambda m: m.name)
def test_default_is_a_measured_point_on_the_front(model: CatalogModel) -> None:
    d = model.defaults
    assert d is not None
    first = points(d.fronts[:1])
    match = [p for p in first if p["config"]["label"] == d.label]
    assert len(match) == 1, f"{d.label!r} is not in bench/results/{d.fronts[0]}.json"
    c = match[0]["config"]
    assert ((c["sparsity"] or 0.0), c["type_k"], c["type_v"]) == (d.sparsity, d.type_k, d.type_v)
    if d.sparsity > 0:  # every head full: S and W are not used
        assert (c["sink"], c["window"]) == (d.sink, d.window)
    assert dominated_by(match[0], points(d.fronts)) == []


def test_the_check_can_fail() -> None:
    """The old SmolLM2 default (s=0.5 S64/W256, f16) is dominated on the same front (by q8_0 among others)."""
    d = CATALOG[0].defaults
    assert d is not None
    old = [p for p in points(d.fronts) if p["config"]["label"] == "rlkv s=0.5 S64/W256"]
    assert old and "q8_0 full" in dominated_by(old[0], points(d.fronts))

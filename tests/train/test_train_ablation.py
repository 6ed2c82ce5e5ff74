"""`rlkv-edge train --objective ablation`: training-free head scores from the KL each head's ablation causes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import saved_tiny_model, tiny_model
from typer.testing import CliRunner

from rlkv_edge.cli import app
from rlkv_edge.heads import load_heads
from rlkv_edge.train.ablation import ablation_kl, scores_from_kl
from rlkv_edge.train.gates import get_gates, set_gates

TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 4


def test_ablation_kl_measures_each_head_alone() -> None:
    """Each entry is the KL of that head local, the others full; a window covering the text gives 0."""
    model = tiny_model("llama", n_layer=2, n_head=4, n_head_kv=2)
    ids = torch.randint(0, 128, (1, 96), generator=torch.Generator().manual_seed(0))
    kl = ablation_kl(model, ids, sink=2, window=8)
    assert kl.shape == (2, 2) and (kl > 0).all()
    assert np.allclose(get_gates(model), 1.0)  # gates restored

    # teeth (issue 28): one head at a time, not all at once. The gates ablation_kl installed (W = 8) stay on the model:
    # entry (1, 0) recomputed by hand matches; the entries differ; every head local at once costs more than any one
    def kl_of(mask: np.ndarray) -> float:
        set_gates(model, 1.0)
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            set_gates(model, mask)
            out = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        set_gates(model, 1.0)
        return float((ref.exp() * (ref - out)).sum(-1).clamp_min(0).mean())

    one = np.ones((2, 2), dtype=np.float32)
    one[1, 0] = 0.0
    assert np.isclose(kl_of(one), kl[1, 0], rtol=1e-4)
    assert len(np.unique(kl.round(8))) == kl.size
    assert kl_of(np.zeros((2, 2), dtype=np.float32)) > kl.max()

    assert np.allclose(ablation_kl(model, ids, sink=2, window=200), 0.0, atol=1e-7)  # local == full
    s = scores_from_kl(kl)
    assert s.max() == 1.0 and (np.argsort(s.ravel()) == np.argsort(kl.ravel())).all()


def test_ablation_command_writes_heads(tmp_path: Path) -> None:
    """The CLI loads a saved model, scores every head on --text and writes a heads.json that records it."""
    model_dir = saved_tiny_model(tmp_path / "tiny")
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    out = tmp_path / "heads.json"
    args = ["train", str(model_dir), "--objective", "ablation", "--text", str(text), "--text-tokens", "200"]
    r = CliRunner().invoke(app, [*args, "--sink", "2", "--window", "8", "--out", str(out), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    heads = load_heads(out)
    assert heads.method == "ablation-kl" and heads.scores.shape == (2, 2) and heads.scores.max() == 1.0
    raw = json.loads(out.read_text())["training"]
    assert raw["calibration_text"] == "calib.txt" and raw["objective"] == "ablation"
    assert np.allclose(scores_from_kl(np.asarray(raw["ablation_kl"])), heads.scores)


@pytest.mark.parametrize("bad", [["--objective", "ablation"], ["--objective", "magic"]])
def test_ablation_bad_input(tmp_path: Path, bad: list[str]) -> None:
    """No --text, or an unknown objective: one line, exit 2."""
    r = CliRunner().invoke(app, ["train", str(tmp_path), *bad])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output

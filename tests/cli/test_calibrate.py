"""`convert --calibrate` stores a calibration; `--kv-budget` then picks the best calibrated point that fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import run_cli
from gguf_fixtures import write_tiny_gguf

from rlkv_edge.calibration import CalibrationPoint, choose_config, grid
from rlkv_edge.heads import HeadScores, save_heads
from rlkv_edge.memory import kv_memory, parse_size
from rlkv_edge.models import read_model

TEXT = "the cat sat on the mat and the dog sat on a mat of the cat " * 12


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("calibrate")
    src = write_tiny_gguf(d / "m.gguf", n_head=4, n_head_kv=2, head_dim=32).path
    save_heads(HeadScores(np.array([[0.9, 0.2], [0.5, 0.1]]), sink_size=4, window_size=16), d / "heads.json")
    (d / "text.txt").write_text(TEXT)
    args = ["convert", str(src), "--mask", str(d / "heads.json"), "--calibrate", str(d / "text.txt")]
    r = run_cli(*args, "--calibrate-tokens", "64", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert "calibrating on 64 tokens of text.txt" in r.stderr
    return d / "m.rlkv.gguf"


def test_calibration_is_stored(calibrated: Path) -> None:
    cal = read_model(calibrated).calibration
    assert cal is not None and cal.n_tokens == 64 and cal.text == "text.txt"
    ref = cal.points[0]
    assert (ref.type_k, ref.sparsity, ref.mean_kl, ref.top1) == ("f16", 0.0, 0.0, 1.0)
    assert len(cal.points) == len(grid(4, 16)) == 52
    pairs = {("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")}
    assert {(p.type_k, p.type_v) for p in cal.points} == pairs
    by = {(p.type_k, p.type_v, p.sparsity, p.sink, p.window): p for p in cal.points}
    # the measurements mean something: all-local with the file's small window is worse than q8_0 full
    assert by[("f16", "f16", 1.0, 4, 16)].mean_kl > by[("q8_0", "q8_0", 0.0, 4, 16)].mean_kl >= 0
    r = run_cli("inspect", str(calibrated), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["calibration"]


@pytest.mark.parametrize("share", [0.25, 0.5, 0.9])
def test_kv_budget_picks_best_calibrated_point(calibrated: Path, share: float) -> None:
    """A budget of `share` x the f16 full cache: --kv-budget loads the lowest-KL calibrated point that fits."""
    model = read_model(calibrated)
    assert model.calibration is not None
    n_ctx = 1024

    def size(p: CalibrationPoint) -> int:
        mem = kv_memory(model.info, p.sparsity, n_ctx, p.type_k, p.type_v, sink=p.sink, window=p.window)
        return int(mem["kv_bytes_compressed"])

    budget = int(share * kv_memory(model.info, 0.0, n_ctx)["kv_bytes_uncompressed"])
    fitting = [p for p in model.calibration.points if size(p) <= budget]
    assert fitting, "the budget should fit some calibrated point"
    choice = choose_config(model.info, model.calibration, budget, n_ctx)
    assert choice.mean_kl == min(p.mean_kl for p in fitting) and choice.kv_bytes <= budget
    flag = f"{budget / 2**20:.6f}MiB"
    r = run_cli("chat", str(calibrated), "--kv-budget", flag, "--ctx", str(n_ctx), "-p", "a", "-n", "2", "-t", "2")
    assert r.returncode == 0, r.stderr
    assert choice.describe() in r.stderr


def test_calibrate_bad_text_writes_nothing(tmp_path: Path) -> None:
    src = write_tiny_gguf(tmp_path / "m.gguf").path
    save_heads(HeadScores(np.array([[0.9, 0.2], [0.5, 0.1]])), tmp_path / "heads.json")
    (tmp_path / "empty.txt").write_text("  \n")
    r = run_cli("convert", str(src), "--mask", str(tmp_path / "heads.json"), "--calibrate", str(tmp_path / "empty.txt"))
    assert r.returncode == 2 and "empty" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.rlkv.gguf").exists()


@pytest.mark.slow
def test_kv_budget_on_smollm2_with_a_stored_calibration(tmp_path: Path) -> None:
    """Issue 13's acceptance: SmolLM2 converted with --calibrate; at each budget the configuration --kv-budget
    loads is the lowest-KL calibrated point that fits (and it says so)."""
    from app_fixtures import placeholder_scores
    from gguf_fixtures import smollm2_path

    heads = HeadScores(placeholder_scores(30, 3), sink_size=64, window_size=256, method="test placeholder")
    save_heads(heads, tmp_path / "heads.json")
    (tmp_path / "text.txt").write_text(Path(__file__).read_text() * 4)
    out = tmp_path / "smol.rlkv.gguf"
    args = ["convert", str(smollm2_path()), "--mask", str(tmp_path / "heads.json"), "-o", str(out)]
    r = run_cli(*args, "--calibrate", str(tmp_path / "text.txt"), "--calibrate-tokens", "256", "-t", "2", timeout=900)
    assert r.returncode == 0, r.stderr
    model = read_model(out)
    assert model.calibration is not None and len(model.calibration.points) == 36
    n_ctx = 8192
    for budget in ("100MiB", "60MiB", "40MiB"):
        choice = choose_config(model.info, model.calibration, parse_size(budget), n_ctx)
        fits = [
            p.mean_kl
            for p in model.calibration.points
            if kv_memory(model.info, p.sparsity, n_ctx, p.type_k, p.type_v, sink=p.sink, window=p.window)[
                "kv_bytes_compressed"
            ]
            <= parse_size(budget)
        ]
        assert fits and choice.mean_kl == min(fits)
        r = run_cli("chat", str(out), "--kv-budget", budget, "--ctx", str(n_ctx), "-p", "Hi", "-n", "2", "-t", "2")
        assert r.returncode == 0, r.stderr
        assert choice.describe() in r.stderr

"""`rlkv-edge frontier`: every family measured in one process, the Pareto front, JSON and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf_fixtures import write_tiny_gguf
from typer.testing import CliRunner

from rlkv_edge.cli import app
from rlkv_edge.frontier import FrontierConfig, FrontierPoint, from_json, mark_front, render


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny converted llama with head dim 32 (quantized KV caches need a multiple of 32)."""
    root = tmp_path_factory.mktemp("frontier")
    scores = np.array([[0.9, 0.2], [0.6, 0.4]], dtype=np.float32)
    rlkv = dict(scores=scores, sparsity=0.5, sink=2, window=8)
    return write_tiny_gguf(root / "tiny32.rlkv.gguf", head_dim=32, rlkv=rlkv).path


def _point(kv: int, kl: float, tg: float | None) -> FrontierPoint:
    return FrontierPoint(FrontierConfig("x", "rlkv", Path("x")), kv, kl, 1.0, tg=tg)


def test_pareto_front() -> None:
    """Dominated points are off the front; ties in every measure keep both on it."""
    pts = [_point(100, 0.0, 10), _point(50, 0.1, 10), _point(50, 0.2, 10), _point(50, 0.1, 20), _point(20, 0.5, 5)]
    mark_front(pts)
    assert [p.on_front for p in pts] == [True, False, False, True, True]
    same = [_point(10, 0.1, None), _point(10, 0.1, None)]
    mark_front(same)
    assert all(p.on_front for p in same)


def test_frontier_command(tiny32: Path, tmp_path: Path) -> None:
    """All families, KL 0 for the reference, the JSON and the PNG written."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog and the cat sat on the mat " * 20)
    out, png = tmp_path / "f.json", tmp_path / "f.png"
    args = ["frontier", str(tiny32), "--text", str(text), "--tokens", "200", "--no-speed", "--random", "2"]
    args += ["--cache-type", "q8_0", "--cache-type", "q8_0/q4_0", "-s", "0.5", "--sink-window", "2:8"]
    r = CliRunner().invoke(app, [*args, "--threads", "1", "--out", str(out), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    points = result["points"]
    families = {p["config"]["family"] for p in points}
    assert families == {"full", "kv-quant", "rlkv", "rlkv+quant", "all-local", "random", "uniform"}
    assert points[0]["config"]["label"] == "f16 full" and points[0]["mean_kl"] == 0.0
    by_label = {p["config"]["label"]: p for p in points}
    assert by_label["q8_0 full"]["kv_bytes"] < by_label["f16 full"]["kv_bytes"]
    assert by_label["all-local S2/W8"]["mean_kl"] > 0
    # rlkv is composed with every given cache type, mixed K/V included
    composed = {p["config"]["label"] for p in points if p["config"]["family"] == "rlkv+quant"}
    assert composed == {"rlkv s=0.5 S2/W8 + q8_0", "rlkv s=0.5 S2/W8 + q8_0/q4_0"}
    mixed = by_label["rlkv s=0.5 S2/W8 + q8_0/q4_0"]["config"]
    assert (mixed["type_k"], mixed["type_v"]) == ("q8_0", "q4_0")
    local_quant = by_label["all-local S2/W8 + q8_0/q4_0"]
    assert local_quant["config"]["family"] == "all-local" and local_quant["config"]["sparsity"] == 1.0
    assert local_quant["kv_bytes"] < by_label["all-local S2/W8"]["kv_bytes"]
    assert any(p["on_front"] for p in points) and points[0]["on_front"]  # nothing beats KL 0 at f16 speed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| front | config |" in r.stdout
    assert render(from_json(result), result) in r.stdout  # a results file re-renders the same table


@pytest.mark.parametrize(
    "bad", [["--sink-window", "8"], ["--sink-window", "2:0"], ["--cache-type", "q9_0"], ["--tokens", "3"]]
)
def test_frontier_bad_input(tiny32: Path, tmp_path: Path, bad: list[str]) -> None:
    """Bad values: one line, exit 2, nothing measured."""
    text = tmp_path / "t.txt"
    text.write_text("a b c " * 50)
    r = CliRunner().invoke(app, ["frontier", str(tiny32), "--text", str(text), *bad])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output


def test_frontier_task_accuracy(tiny32: Path, tmp_path: Path) -> None:
    """--tasks adds each configuration's accuracy: with answers set to what the f16 full cache answers (taken from
    `rlkv-edge eval`), the reference scores 100% and every point has an accuracy in [0, 1]."""
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog and the cat sat on the mat " * 20)
    tasks = tmp_path / "tasks.jsonl"
    prompts = [f"the cat {w} on the" for w in ("sat", "is", "dog", "mat")]
    tasks.write_text("".join(json.dumps({"prompt": p, "answer": "?"}) + "\n" for p in prompts))
    common = ["--tasks", str(tasks), "--max-tokens", "8", "--system", "", "--threads", "1"]
    r = CliRunner().invoke(app, ["eval", str(tiny32), "-s", "0", *common, "--json"])
    assert r.exit_code == 0, r.output
    ref_outputs = json.loads(r.stdout)["tasks"]["results"][0]["outputs"]
    answers = [o["extracted"] for o in ref_outputs]
    tasks.write_text(
        "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers, strict=True))
    )
    out = tmp_path / "f.json"
    args = ["frontier", str(tiny32), "--text", str(text), "--tokens", "100", "--no-speed", "--random", "1"]
    args += ["--cache-type", "q8_0", "-s", "0.5", "--sink-window", "2:8", "--no-uniform", *common, "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    points = json.loads(out.read_text())["points"]
    assert points[0]["config"]["label"] == "f16 full" and points[0]["accuracy"] == 1.0
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in points)
    assert "tasks.jsonl (4)" in r.stdout


def test_measure_resumes_from_a_saved_reference(tiny32: Path) -> None:
    """A point measured against saved reference log-probs (another process, a resumed run) gets the KL it gets
    beside the reference; on_point hands out the reference exactly once, with the point that made it."""
    from rlkv_edge.frontier import measure

    tokens = list(range(3, 120))
    f16 = FrontierConfig("f16 full", "full", tiny32, 0.0)
    q8 = FrontierConfig("q8_0 full", "kv-quant", tiny32, 0.0, type_k="q8_0", type_v="q8_0")
    seen: list[tuple[str, np.ndarray | None]] = []
    together = measure([f16, q8], tokens, n_ctx=128, depth=None, n_threads=1, score_last=64,
                       on_point=lambda p, ref: seen.append((p.config.label, ref)))  # fmt: skip
    assert [label for label, _ in seen] == ["f16 full", "q8_0 full"]
    ref = seen[0][1]
    assert ref is not None and ref.shape[0] == 64 and seen[1][1] is None
    alone = measure([q8], tokens, n_ctx=128, depth=None, n_threads=1, score_last=64, reference=ref)
    assert together[1].mean_kl > 0
    assert alone[0].mean_kl == pytest.approx(together[1].mean_kl, rel=1e-6)
    assert alone[0].kv_bytes == together[1].kv_bytes

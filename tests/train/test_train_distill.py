"""`rlkv-edge train --objective distill`: KL to the full model on a text, gate-only checkpoints, heads.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_models import saved_tiny_model, tiny_model, tiny_tokenizer
from transformers import TrainerCallback
from typer.testing import CliRunner

from rlkv_edge.cli import app
from rlkv_edge.errors import DataError
from rlkv_edge.heads import load_heads
from rlkv_edge.masks import boundary_tie
from rlkv_edge.train.config import TrainConfig
from rlkv_edge.train.distill import distill_kl, text_chunks, train_distill
from rlkv_edge.train.gates import GATES_FILE, full_gates, gate_parameters, get_gates, install_gates, set_gates

torch.set_num_threads(2)
TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 4  # 332 chars


def _cfg(tmp_path: Path, **kw: Any) -> TrainConfig:
    """A tiny distillation recipe: 64-token chunks of TEXT, S=2, W=4."""
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    base: dict[str, Any] = dict(
        model="tiny", objective="distill", text=str(text), text_tokens=64, out=str(tmp_path / "heads.json"),
        output_dir=str(tmp_path / "run"), steps=4, sink=2, window=4, save_steps=2, dtype="float32", lr=0.05,
        beta=1.0,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg: TrainConfig, callbacks: list | None = None) -> Any:
    """train_distill on a fresh tiny llama with the character tokenizer."""
    return train_distill(cfg, model=tiny_model("llama"), tokenizer=tiny_tokenizer(), callbacks=callbacks)


def test_loss_zero_at_full_gates_and_gradient_moves_gates() -> None:
    """Gates at 1: the gated model is the teacher (KL 0, top-1 1); gates at 0.5: KL > 0 with a gradient on
    every gate, and full_gates gives the teacher back and restores the gates."""
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 48), generator=torch.Generator().manual_seed(0))
    install_gates(model, sink=2, window=4)
    teacher = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    kl, top1 = distill_kl(model(input_ids=ids).logits, teacher)
    assert kl.item() == pytest.approx(0.0, abs=1e-6) and top1 == 1.0
    set_gates(model, 0.5)
    kl, top1 = distill_kl(model(input_ids=ids).logits, teacher)
    kl.backward()
    assert kl.item() > 1e-4
    assert all(g.grad is not None and (g.grad.abs() > 0).all() for g in gate_parameters(model))
    with torch.no_grad(), full_gates(model):
        again = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    torch.testing.assert_close(again, teacher)
    assert np.allclose(get_gates(model), 0.5)


def test_text_chunks() -> None:
    """Consecutive full chunks, one short chunk for a short text, DataError when the text fits in S + W."""
    assert text_chunks(list(range(10)), 4, 3) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert text_chunks(list(range(10)), 16, 3) == [list(range(10))]
    with pytest.raises(DataError, match="more than S \\+ W = 10"):
        text_chunks(list(range(10)), 4, 10)


def test_run_moves_gates_writes_heads_and_resumes_exactly(tmp_path: Path) -> None:
    """4 steps lower the gates and write heads.json; a run resumed from checkpoint-2 starts from its gates
    and ends with the same heads as the uninterrupted run."""
    cfg = _cfg(tmp_path)
    trainer, heads = _run(cfg)
    assert trainer.state.global_step == 4
    assert np.all(np.asarray(heads.training["gates"]) < 1.0), "the gates did not move"
    loaded = load_heads(cfg.out)
    assert loaded.method == "rlkv-distill" and (loaded.sink_size, loaded.window_size) == (2, 4)
    raw = json.loads(Path(cfg.out).read_text())["training"]
    assert raw["objective"] == "distill" and raw["n_chunks"] == 5 and raw["steps_done"] == 4
    assert raw["final_kl"] > 0 and 0 < raw["final_top1"] <= 1
    kls = [h["rlkv/kl"] for h in trainer.state.log_history if "rlkv/kl" in h]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[-1] > kls[0]  # gates start at 1: the teacher itself
    ckpt = Path(cfg.output_dir) / "checkpoint-2"
    assert (ckpt / GATES_FILE).exists() and not list(ckpt.glob("*.safetensors"))
    saved = torch.load(ckpt / GATES_FILE, weights_only=True)
    seen: dict[str, np.ndarray] = {}

    class Peek(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            seen["gates"] = get_gates(model)

    _, resumed = _run(_cfg(tmp_path, resume=str(ckpt), out=str(tmp_path / "heads2.json")), callbacks=[Peek()])
    np.testing.assert_array_equal(seen["gates"], np.stack([saved["layer.0"].numpy(), saved["layer.1"].numpy()]))
    np.testing.assert_allclose(resumed.scores, heads.scores, rtol=1e-6)


def test_gates_pinned_at_zero_keep_a_strict_order(tmp_path: Path) -> None:
    """A large lr pins every gate at 0; the clamp excess still orders them, so no tie straddles any cut."""
    _, heads = _run(_cfg(tmp_path, lr=0.3, steps=6, save_steps=100))
    assert np.all(np.asarray(heads.training["gates"]) == 0.0)
    assert len(set(heads.scores.ravel().tolist())) == heads.scores.size
    assert all(boundary_tie(heads.scores, s) is None for s in (0.25, 0.5, 0.75))
    excess = np.asarray(heads.training["clamp_excess"]).ravel()
    assert (np.argsort(heads.scores.ravel()) == np.argsort(excess)).all()  # more cut off below 0 = lower


def test_distill_command(tmp_path: Path) -> None:
    """The CLI trains a saved model on --text and writes heads.json; a text no longer than S + W is refused."""
    model_dir = saved_tiny_model(tmp_path / "tiny")
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    out = tmp_path / "heads.json"
    common = ["train", str(model_dir), "--objective", "distill", "--text", str(text), "--dtype", "float32"]
    common += ["--out", str(out), "--output-dir", str(tmp_path / "run"), "--steps", "2", "--text-tokens", "64"]
    r = CliRunner().invoke(app, [*common, "--sink", "2", "--window", "4"])
    assert r.exit_code == 0, r.output
    assert load_heads(out).method == "rlkv-distill" and "step 2/2: KL to full" in r.output
    out.unlink()
    r = CliRunner().invoke(app, [*common, "--sink", "300", "--window", "64"])
    assert r.exit_code == 2 and "more than S + W = 364" in r.stderr and not out.exists(), r.output

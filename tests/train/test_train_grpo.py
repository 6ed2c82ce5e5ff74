"""GRPO on the gates of a tiny random model: moves, penalty, clamp, heads.json, checkpoints, resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

import tiny_models
import torch
from tiny_models import tiny_model, tiny_tokenizer
from transformers import TrainerCallback

from rlkv_edge.heads import load_heads
from rlkv_edge.scoring import exact_match_reward, extract_answer, get_reward, math_reward
from rlkv_edge.train.config import TrainConfig
from rlkv_edge.train.gates import GATES_FILE, get_gates
from rlkv_edge.train.trainer import penalty_weight, train_heads

torch.set_num_threads(2)


def digit_fraction(completions: list[str], **_: Any) -> list[float]:
    """A reward with variance on random models: the fraction of digits in the completion."""
    return [sum(c.isdigit() for c in x) / max(1, len(x)) for x in completions]


def constant(value: float) -> Any:
    """A reward function that always returns value (so GRPO advantages are zero)."""

    def const(completions: list[str], **_: Any) -> list[float]:
        return [value] * len(completions)

    return const


def _cfg(tmp_path: Path, **kw: Any) -> TrainConfig:
    """A tiny recipe: 2 prompts × 4 completions per step, 8-token completions."""
    base: dict[str, Any] = dict(
        model="tiny-llama", dataset="reasoning-gym:basic_arithmetic", out=str(tmp_path / "heads.json"),
        output_dir=str(tmp_path / "run"), steps=3, group_size=4, prompts_per_step=2, micro_batch_size=4,
        max_completion_tokens=8, sink=2, window=4, n_problems=16, save_steps=2, chat=False, dtype="float32",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg: TrainConfig, reward: Any, callbacks: list | None = None) -> Any:
    """train_heads on a fresh tiny llama with the character tokenizer."""
    return train_heads(
        cfg, model=tiny_model("llama"), tokenizer=tiny_tokenizer(), reward_funcs=[reward], callbacks=callbacks
    )


def test_penalty_weight() -> None:
    """β′ = 1[r̄ > τ]·β·(e^{r̄} − 1): zero at and below τ."""
    assert penalty_weight(0.5, 1e-3, 0.5) == 0.0
    assert penalty_weight(0.2, 1e-3, 0.5) == 0.0
    assert penalty_weight(float("nan"), 1e-3, 0.5) == 0.0
    assert penalty_weight(0.75, 1e-3, 0.5) == pytest.approx(1e-3 * (math.exp(0.75) - 1))


def test_three_step_run_moves_gates_writes_heads_and_resumes(tmp_path: Path) -> None:
    """3 GRPO steps move the gates, heads.json is valid, checkpoints hold only gates, resume loads them."""
    cfg = _cfg(tmp_path)
    trainer, heads = _run(cfg, digit_fraction)
    assert trainer.state.global_step == 3
    scores = heads.scores
    assert scores.shape == (2, 2) and np.all((scores >= 0) & (scores <= 1))
    assert np.any(scores < 1.0), "the gates did not move"
    loaded = load_heads(cfg.out)
    np.testing.assert_allclose(loaded.scores, scores)
    assert loaded.method == "rlkv-grpo" and (loaded.sink_size, loaded.window_size) == (2, 4)
    raw = json.loads(Path(cfg.out).read_text())
    assert raw["model"]["n_layer"] == 2 and raw["model"]["n_head_kv"] == 2 and raw["model"]["n_head"] == 4
    assert raw["model"]["architecture"] == "llama" and raw["training"]["steps"] == 3
    ckpt = Path(cfg.output_dir) / "checkpoint-2"
    assert (ckpt / GATES_FILE).exists()
    assert not list(ckpt.glob("*.safetensors")) and not list(ckpt.glob("pytorch_model*"))
    saved = torch.load(ckpt / GATES_FILE, weights_only=True)

    seen: dict[str, np.ndarray] = {}

    class Peek(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            seen["gates"] = get_gates(model)
            seen["step"] = np.array(state.global_step)

    resumed = _cfg(tmp_path, resume=str(ckpt), out=str(tmp_path / "heads2.json"))
    trainer2, _ = _run(resumed, digit_fraction, callbacks=[Peek()])
    np.testing.assert_array_equal(seen["gates"], np.stack([saved["layer.0"].numpy(), saved["layer.1"].numpy()]))
    assert int(seen["step"]) == 2 and trainer2.state.global_step == 3


def test_no_penalty_when_mean_reward_at_most_tau(tmp_path: Path) -> None:
    """r̄ = 0.25 ≤ τ and zero advantages: no penalty, so the gates stay exactly 1."""
    trainer, heads = _run(_cfg(tmp_path, steps=2, save_steps=100, beta=10.0), constant(0.25))
    weights = [h["rlkv/penalty_weight"] for h in trainer.state.log_history if "rlkv/penalty_weight" in h]
    assert weights and all(w == 0.0 for w in weights)
    assert np.all(heads.scores == 1.0)


def test_penalty_pushes_gates_down_and_clamp_keeps_them_in_range(tmp_path: Path) -> None:
    """r̄ = 1 > τ: the L1 term alone lowers every gate; a large lr would cross 0 without the clamp."""
    trainer, heads = _run(_cfg(tmp_path, steps=3, save_steps=100, lr=0.5), constant(1.0))
    weights = [h["rlkv/penalty_weight"] for h in trainer.state.log_history if "rlkv/penalty_weight" in h]
    assert weights[0] == pytest.approx(1e-3 * (math.e - 1))
    assert np.all(heads.scores == 0.0)  # 1 − 3·0.5 < 0, clamped


def test_rewards() -> None:
    """math-verify, exact match, answer extraction, plug-ins by name."""
    assert extract_answer("so x = \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("#### 42") == "42"
    assert math_reward(["\\boxed{0.5}", "\\boxed{3}", "no answer"], ["1/2", "4", "1"]) == [1.0, 0.0, 0.0]
    conv = [[{"role": "assistant", "content": "The answer is 7."}]]
    assert exact_match_reward(conv, ["7"]) == [1.0]
    assert get_reward("rlkv_edge.scoring:math_reward") is math_reward
    assert get_reward("exact") is exact_match_reward
    with pytest.raises(ValueError):
        get_reward("nope")


def test_data_sources(tmp_path: Path) -> None:
    """reasoning-gym, local JSONL with GSM8K-style answers, stratified self-distillation buckets."""
    from rlkv_edge.train.data import Bucket, load_problems, make_prompt, parse_buckets, stratify

    gym = load_problems("reasoning-gym:basic_arithmetic", n=5, seed=1)
    assert len(gym) == 5 and all(p["question"] and p["answer"] for p in gym)
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "1+1?", "answer": "so #### 2"}\n{"problem": "2+2?", "solution": "\\\\boxed{4}"}\n')
    local = load_problems(str(path))
    assert sorted(p["answer"] for p in local) == ["2", "4"]
    assert make_prompt("Q", conversational=False).startswith("Q\n")
    assert make_prompt("Q")[0]["role"] == "user"
    assert parse_buckets("0-10:2,10-20:1") == [Bucket(0, 10, 2), Bucket(10, 20, 1)]
    solved = [({"question": str(i), "answer": ""}, n) for i, n in enumerate([1, 2, 3, 12, 15, 30])]
    kept = stratify(solved, parse_buckets("0-10:2,10-20:1"))
    assert len(kept) == 3 and sum(int(p["question"]) >= 3 for p in kept) == 1


def test_self_distill_keeps_solved(tmp_path: Path) -> None:
    """Greedy pass of the unmodified model: with an always-correct reward every problem is kept per bucket."""
    from rlkv_edge.train.data import Bucket, load_problems, self_distill

    problems = load_problems("reasoning-gym:basic_arithmetic", n=4, seed=0)
    kept = self_distill(
        tiny_model("llama"), tiny_tokenizer(), problems, constant(1.0), [Bucket(0, 100, 3)],
        max_new_tokens=4, batch_size=2, conversational=False,
    )  # fmt: skip
    assert len(kept) == 3


@pytest.mark.slow
def test_accelerate_two_processes(tmp_path: Path) -> None:
    """A 2-process ``accelerate launch --cpu`` run trains and writes heads.json once."""
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            import torch
            torch.set_num_threads(1)
            sys.path.insert(0, {str(Path(tiny_models.__file__).parent)!r})
            from rlkv_edge.train.config import TrainConfig
            from rlkv_edge.train.trainer import train_heads
            from tiny_models import tiny_model, tiny_tokenizer
            def digits(completions, **kw):
                return [sum(c.isdigit() for c in x) / max(1, len(x)) for x in completions]
            cfg = TrainConfig(model="tiny", out={str(tmp_path / "heads.json")!r},
                output_dir={str(tmp_path / "run")!r}, steps=2, group_size=4, prompts_per_step=2,
                micro_batch_size=4, max_completion_tokens=8, sink=2,
                window=4, n_problems=16, save_steps=100, chat=False, dtype="float32")
            train_heads(cfg, model=tiny_model("llama"), tokenizer=tiny_tokenizer(), reward_funcs=[digits])
            """
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert load_heads(tmp_path / "heads.json").scores.shape == (2, 2)

"""The key-recall task family, the showcase's comparison masks and the shipped default heads file."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rlkv_edge import tasks as T
from rlkv_edge.heads import load_heads
from rlkv_edge.masks import full_heads_per_layer

ROOT = Path(__file__).resolve().parents[2]


def _showcase():
    spec = importlib.util.spec_from_file_location("showcase", ROOT / "bench" / "showcase.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["showcase"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_problems_are_deterministic_and_train_eval_disjoint():
    a = T.make_problems(50, T.TRAIN_SEED)
    assert a == T.make_problems(50, T.TRAIN_SEED)
    b = T.make_problems(50, T.EVAL_SEED)
    assert not {p["question"] for p in a} & {p["question"] for p in b}
    for p in a:
        assert p["answer"].isdigit() and len(p["answer"]) == 4
        assert f"is {p['answer']}." in p["question"]
        # the only four-digit number in the prompt is the code, stated at the start
        assert p["question"].index(p["answer"]) < 120
        assert len(p["question"].split()) > 120


def test_score_and_reward():
    assert T.score_answer("The secret code of the red box is 4821. The farmer 1234", "4821") == 1.0
    assert T.score_answer("It is 1234, not 4821", "4821") == 0.0
    assert T.score_answer("no idea", "4821") == 0.0
    assert T.score_answer("48210", "4821") == 0.0
    comp = [[{"role": "assistant", "content": "Code: 4821"}], "7777"]
    assert T.recall_reward(comp, ["4821", "4821"]) == [1.0, 0.0]


def test_long_text_and_jsonl(tmp_path):
    text = T.long_text(n_words=4400)
    assert len(text.split()) > 4000 and text == T.long_text(n_words=4400)
    out = T.write_jsonl(T.make_problems(3, 7), tmp_path / "p.jsonl")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"question", "answer"}
    T.main([str(tmp_path / "q.jsonl"), "--n", "2", "--seed", "5"])
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("s", [0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0])
def test_uniform_masks_are_per_layer_even(s):
    sc = _showcase()
    scores = sc.uniform_scores((30, 3), seed=0)
    per_layer = full_heads_per_layer(scores, s)
    assert per_layer.max() - per_layer.min() <= 1
    r = sc.random_scores((30, 3), 1)
    assert r.shape == (30, 3) and not np.array_equal(r, sc.random_scores((30, 3), 2))


def test_default_heads_file_is_shipped_with_provenance():
    p = Path(str(importlib.resources.files("rlkv_edge") / "data" / "default_heads.json"))
    assert p.is_file(), "rlkv_edge/data/default_heads.json is not in the installed package"
    h = load_heads(p)
    assert h.scores.shape == (30, 3)
    assert h.method in ("rlkv-grpo", "rlkv-distill")  # trained, by the rule in docs/notes/head-scores-cross-table.md
    assert h.model.get("architecture") == "llama"
    tr = h.training
    assert tr.get("steps_done", 0) >= 1 and "command" in tr and tr.get("objective") in ("grpo", "distill")
    # learned, not constant
    assert float(h.scores.max() - h.scores.min()) > 0


def test_train_prompt_template_option():
    from rlkv_edge.train.config import TrainConfig
    from rlkv_edge.train.data import PROMPT_TEMPLATE, make_prompt

    assert TrainConfig(model="m").prompt_template == PROMPT_TEMPLATE
    cfg = TrainConfig(model="m", prompt_template="{question}")
    assert make_prompt("Q?", True, cfg.prompt_template) == [{"role": "user", "content": "Q?"}]
    with pytest.raises(ValueError, match="question"):
        TrainConfig(model="m", prompt_template="no placeholder")


def test_summary_by_sparsity_and_render(tmp_path, capsys):
    sc = _showcase()
    R = sc.Row
    rows = [
        R("full cache", 0.0, 90, 1.0, 30, 0.0, 1.0),
        R("learned", 0.5, 45, 1.0, 30, 0.2),
        R("random-0", 0.5, 45, 0.0, 0, 0.9),
        R("random-1", 0.5, 45, 0.5, 15, 0.3),
        R("uniform", 0.5, 45, 0.25, 8, 0.6),
    ]
    table = sc.summary_by_sparsity(rows)
    assert "| 0.5 | 100.0% | 25.0% (0.0, 50.0) | 25.0% | 0.2000 | 0.6000 (0.9000, 0.3000) | 0.33 |" in table
    meta = {"n_problems": 30, "text_tokens": 4096, "sink": 16, "window": 64, "bench_depth": 6144}
    meta["summary"] = sc.summarize(rows)
    assert "+75.0 points" in meta["summary"] and "= 0.33" in meta["summary"]
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps({**meta, "rows": [r.__dict__ for r in rows]}))
    assert sc.main(["--render", str(saved)]) == 0
    assert table in capsys.readouterr().out


def test_lead_words_move_the_code_past_the_sinks():
    """lead_words puts filler before the code; lead_words=0 keeps the original problems (same RNG use)."""
    plain = T.make_problems(5, T.EVAL_SEED)
    assert plain == T.make_problems(5, T.EVAL_SEED, lead_words=0)
    led = T.make_problems(5, T.EVAL_SEED, n_words=250, lead_words=60)
    for p in led:
        assert p["question"].index(p["answer"]) > 300  # ~60 words of filler first
        assert p["question"].count(p["answer"]) == 1


def test_problems_are_sized_for_s_and_w():
    """S16/W64 keeps the original problems; S64/W256 (and anything between) gets the code past the sinks."""
    assert T.problems_for(3, T.EVAL_SEED, 16, 64) == T.make_problems(3, T.EVAL_SEED)
    assert T.recall_size(32, 128) == T.recall_size(64, 256) == (250, 60)
    assert T.problems_for(2, 5, 64, 256) == T.make_problems(2, 5, 250, 60)
    with pytest.raises(ValueError, match="S=128, W=256"):
        T.recall_size(128, 256)

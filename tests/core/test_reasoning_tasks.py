"""The linked-code reasoning task family (rlkv_edge.reasoning): generation, splits, scoring, reward, JSONL."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from rlkv_edge import reasoning
from rlkv_edge.scoring import get_reward


def test_deterministic_per_seed() -> None:
    a = reasoning.make_problems(20, seed=7)
    assert a == reasoning.make_problems(20, seed=7)
    assert a != reasoning.make_problems(20, seed=8)


def test_train_and_held_out_do_not_overlap() -> None:
    assert reasoning.TRAIN_SEED != reasoning.EVAL_SEED
    train = reasoning.make_problems(300, reasoning.TRAIN_SEED)
    held = reasoning.make_problems(300, reasoning.EVAL_SEED)
    assert not {p["question"] for p in train} & {p["question"] for p in held}
    train2, held2 = reasoning.split(50, 50)
    assert train2 == train[:50]
    assert not {p["question"] for p in train2} & {p["question"] for p in held2}


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_problem_is_consistent(hops: int) -> None:
    for p in reasoning.make_problems(30, seed=hops, hops=hops):
        q, answer = p["question"], p["answer"]
        codes = re.findall(r"\b\d{4}\b", q)
        assert len(codes) == reasoning.N_CODES and len(set(codes)) == reasoning.N_CODES
        assert answer in codes
        # the codes come first, far before the question; the filler holds no digits
        assert q.index(answer) < len(q) // 2
        assert q.count("has the same code as") == hops
        # following the links from the asked object reaches the object whose code is the answer
        asked = re.search(r"What is the secret code of the (\w+) (\w+)\?", q)
        assert asked is not None
        colour, obj = asked.groups()
        links = dict(re.findall(rf"The (\w+) {obj} has the same code as the (\w+) {obj}\.", q))
        for _ in range(hops):
            colour = links[colour]
        assert f"The secret code of the {colour} {obj} is {answer}." in q
        assert reasoning.score_answer(p["cot"], answer) == 1.0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        reasoning.make_problem(random.Random(0), n_codes=0)
    with pytest.raises(ValueError):
        reasoning.make_problem(random.Random(0), n_codes=8, hops=5)


def test_scorer_accepts_right_and_rejects_wrong() -> None:
    ok = "The blue box has the same code as the red box.\nThe secret code of the red box is 4821.\nAnswer: 4821"
    assert reasoning.score_answer(ok, "4821") == 1.0
    assert reasoning.score_answer("The secret code of the red box is 4821.", "4821") == 1.0
    assert reasoning.score_answer("answer is **4821**", "4821") == 1.0
    # the 'Answer:' line wins over other codes; without one the last code counts
    assert reasoning.score_answer("It could be 4821 or 1234.\nAnswer: 1234", "4821") == 0.0
    assert reasoning.score_answer("The code is 4821. No, the code is 1234.", "4821") == 0.0
    assert reasoning.score_answer("The code is 48211.", "4821") == 0.0
    assert reasoning.score_answer("I do not know.", "4821") == 0.0
    assert reasoning.score_answer("", "4821") == 0.0


def test_reward_function_shape() -> None:
    completions = ["Answer: 4821", [{"role": "assistant", "content": "The code is 1234."}], "no idea"]
    rewards = reasoning.chain_reward(completions, ["4821", "1234", "5555"], prompts=["a", "b", "c"])
    assert rewards == [1.0, 1.0, 0.0]
    assert all(isinstance(r, float) for r in rewards)
    assert get_reward("chain") is reasoning.chain_reward
    assert get_reward("rlkv_edge.reasoning:chain_reward") is reasoning.chain_reward


def test_jsonl_round_trip(tmp_path: Path) -> None:
    problems = reasoning.make_problems(5, seed=3)
    path = reasoning.write_jsonl(problems, tmp_path / "sub" / "p.jsonl")
    assert reasoning.read_jsonl(path) == problems
    reasoning.main([str(tmp_path / "cli.jsonl"), "--n", "4", "--seed", "3"])
    assert reasoning.read_jsonl(tmp_path / "cli.jsonl") == problems[:4]


def test_eval_reads_the_file(tmp_path: Path) -> None:
    from rlkv_edge.evaluate import Task, is_correct, load_tasks

    problems = reasoning.make_problems(3, seed=4)
    tasks = load_tasks(str(reasoning.write_jsonl(problems, tmp_path / "p.jsonl")))
    assert [t.answer for t in tasks] == [p["answer"] for p in problems]
    task = Task(problems[0]["question"], problems[0]["answer"])
    assert is_correct(problems[0]["cot"], task, reasoning.chain_reward)

"""The program-trace task family (rlkv_edge.program_trace): the program really prints the answer, splits are
disjoint, the scorer reads the model's answer forms, the reward is registered."""

from __future__ import annotations

import contextlib
import io
import random
import re

import pytest

from rlkv_edge import program_trace as P
from rlkv_edge.scoring import get_reward


def test_the_program_prints_the_answer_and_the_cot_ends_with_it() -> None:
    for p in P.make_problems(50, seed=3):
        code = re.search(r"```python\n(.*?)```", p["question"], re.DOTALL)
        assert code is not None
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code.group(1), {})  # the generated program: assignments and print(x) only
        assert out.getvalue().strip() == p["answer"]
        assert p["cot"].splitlines()[-1] == f"Answer: {p['answer']}"
        assert code.group(1).count("\n") == P.N_LINES + 1  # N_LINES lines, print(x)
        assert int(p["answer"]) >= 0


def test_deterministic_and_disjoint_splits() -> None:
    assert P.make_problems(20, seed=5) == P.make_problems(20, seed=5)
    assert P.make_problems(20, seed=5) != P.make_problems(20, seed=6)
    train, held = P.split(300, 100)
    assert len(held) > 0 and not {p["question"] for p in train} & {p["question"] for p in held}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("Therefore, the final answer is `Answer: 24`.", "24"),
        ("x is 8, and the answer is `'Answer: 8'`.", "8"),
        ("Answer: 3\nAnswer: 17", "17"),
        ("making `x` equal to 12.\n\nSo it prints 12", "12"),
        ("no number at all", None),
    ],
)
def test_final_number(text: str, want: str | None) -> None:
    assert P.final_number(text) == want


def test_reward_is_registered_and_scores() -> None:
    reward = get_reward("trace")
    assert reward(["... Answer: 5", "Answer: 6", [{"content": "Answer: 5"}]], ["5", "5", "5"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        P.make_problem(random.Random(0), n_lines=1)

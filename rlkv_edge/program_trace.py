"""A verifiable chain-of-thought family a 0.5B coder model can do, and that reads back: tracing a program.

Each problem is a short Python program that sets `x` and changes it line by line, and asks what it prints:

    What does this Python program print?

    ```python
    x = 5
    x = x + 6
    x = x - 9
    ...
    print(x)
    ```

    Trace it line by line: for each line write the line and the new value of x. Then give the final line as
    'Answer: <value>'.

Qwen2.5-Coder-0.5B-Instruct answers with one sentence per line of the program ("The second line `x = x - 9`
subtracts 9 ..., making `x` equal to 2."), 160–210 tokens for five lines. Each sentence quotes the next line
of the program, which sits further back with every sentence: beyond a window of 64 tokens after the first
two. A head that sees only sinks + window loses its place in the program; the running value is local. So the
family needs heads that read the whole past — the RLKV paper's question — and the chain of thought carries it.

Problems are generated here (nothing is downloaded) and are deterministic per seed; training and held-out
evaluation use disjoint seeds (TRAIN_SEED, EVAL_SEED). `trace_reward` is a TRL reward (`--reward trace`, or
`rlkv_edge.program_trace:trace_reward`), `score_answer` the scorer; ask with no system prompt
(`rlkv-edge eval --system ""`). This module needs neither torch nor llama.cpp.

    python -m rlkv_edge.program_trace held.jsonl --n 100 --seed 2400
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlkv_edge.scoring import completion_text, register_reward

TRAIN_SEED = 1400
EVAL_SEED = 2400
N_LINES = 5  # `x = v` and four updates
MAX_TOKENS = 400  # the model's answers take 160–210 tokens at five lines

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*[`*'\"]*\s*(-?\d+)", re.IGNORECASE)
_INT = re.compile(r"(?<![\d.])-?\d+(?![\d.])")


def make_problem(rng: random.Random, n_lines: int = N_LINES) -> dict[str, str]:
    """One problem: the question, its answer and a reference chain of thought (`cot`)."""
    if n_lines < 2:
        raise ValueError("need n_lines >= 2")
    x = rng.randint(1, 9)
    code, cot = [f"x = {x}"], [f"x = {x}: x is {x}"]
    for _ in range(n_lines - 1):
        op, d = rng.choice("+-"), rng.randint(1, 9)
        if op == "-" and x - d < 0:
            op = "+"
        x = x + d if op == "+" else x - d
        code.append(f"x = x {op} {d}")
        cot.append(f"{code[-1]}: x is {x}")
    program = "\n".join([*code, "print(x)"])
    question = (
        f"What does this Python program print?\n\n```python\n{program}\n```\n\n"
        "Trace it line by line: for each line write the line and the new value of x. Then give the final "
        "line as 'Answer: <value>'."
    )
    return {"question": question, "answer": str(x), "cot": "\n".join([*cot, f"Answer: {x}"])}


def make_problems(n: int, seed: int, n_lines: int = N_LINES) -> list[dict[str, str]]:
    """n problems, deterministic for a seed (TRAIN_SEED for training, EVAL_SEED for held-out)."""
    rng = random.Random(seed)
    return [make_problem(rng, n_lines) for _ in range(n)]


def split(n_train: int, n_eval: int, n_lines: int = N_LINES) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and held-out problems from TRAIN_SEED / EVAL_SEED, any question seen in training dropped."""
    train = make_problems(n_train, TRAIN_SEED, n_lines)
    seen = {p["question"] for p in train}
    return train, [p for p in make_problems(n_eval, EVAL_SEED, n_lines) if p["question"] not in seen]


def final_number(text: str) -> str | None:
    """The final answer of a completion: the number on its last 'Answer:' line, else its last integer."""
    tagged = _ANSWER.findall(text)
    if tagged:
        return str(int(tagged[-1]))
    ints = _INT.findall(text)
    return str(int(ints[-1])) if ints else None


def score_answer(text: str, answer: str) -> float:
    """1.0 when the completion's final number is the program's output, else 0.0."""
    return float(final_number(text) == str(answer).strip())


def trace_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """TRL reward: 0/1 correctness of each completion's final number."""
    return [score_answer(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]


register_reward("trace", trace_reward)


def write_jsonl(problems: Iterable[dict[str, str]], path: str | Path) -> Path:
    """Write problems as JSONL (`question`, `answer`, `cot`), readable by `train` and `eval --tasks`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m rlkv_edge.program_trace OUT.jsonl [--n N] [--seed SEED] [--lines K]`."""
    import argparse

    ap = argparse.ArgumentParser(description="Write program-trace problems (question, answer, cot) as JSONL.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--lines", type=int, default=N_LINES, help="lines of the program before print(x)")
    args = ap.parse_args(argv)
    write_jsonl(make_problems(args.n, args.seed, args.lines), args.out)
    print(f"wrote {args.n} problems (seed {args.seed}) to {args.out}")


if __name__ == "__main__":
    main()

"""A verifiable multi-hop reasoning task family: follow "same code as" links back to a code stated far away.

Each problem states a few secret codes near the start ("The secret code of the red box is 4821."), then a
stretch of synthetic filler prose, then one or more links ("The yellow box has the same code as the red
box."), a little more filler, and asks for the code of the last-linked object. Answering needs a short
chain of thought: name the object the link points to (hop by hop when there are several links), then
recall that object's code from the start of the text, about 200 tokens back (well beyond S + W = 80 of
the shipped S16/W64; raise `n_words` for larger windows), among distractor codes. A model whose heads are
all local (sinks + recent window) sees the links but none of the codes.

The reference chain of thought, stored with every problem as `cot`, is one line per hop and the code:

    The yellow box has the same code as the red box.
    The secret code of the red box is 4821.
    Answer: 4821

Problems are generated here from word lists and random numbers (nothing is downloaded) and are
deterministic per seed; training and held-out evaluation use disjoint seeds (TRAIN_SEED, EVAL_SEED).

    from rlkv_edge.reasoning import make_problems, write_jsonl, chain_reward
    problems = make_problems(200, seed=EVAL_SEED)   # [{"question", "answer", "cot"}]

`chain_reward` is a TRL reward function (`--reward rlkv_edge.reasoning:chain_reward`, or `--reward chain`
once this module is imported) and `score_answer` the matching scorer for `rlkv_edge.evaluate` tasks: the
code on an 'Answer:' line, else the last four-digit number of the text, must be the linked one. Ask with
no system prompt (`rlkv-edge eval --system ""`): the bundled SmolLM2's template then adds its own.
This module needs neither torch nor llama.cpp.

Status: **the bundled SmolLM2-135M-Instruct is at chance on it** (full cache 32.5% on 40 held-out problems,
the 1-in-3 of picking one of the stated codes; all-local at S16/W64 0%; `bench/results/reasoning_task.json`).
It recites the codes in order instead of following the link. Issue 14 asks for ≥ 50% with a full cache; no
design tried so far reaches it with this model (docs/notes/reasoning-task-family.md lists them), so the cross
table does not rank head sets on it.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlkv_edge.scoring import completion_text, register_reward
from rlkv_edge.tasks import COLOURS, OBJECTS, filler

TRAIN_SEED = 1100
EVAL_SEED = 2100
N_CODES = 3  # codes stated at the start: one is linked, the others are distractors
HOPS = 1  # "same code as" links between the asked object and the coded one
N_WORDS = 60  # filler words between the codes and the links: the codes sit ~200 tokens back
N_WORDS_AFTER = 30  # filler words between the links and the question

_CODE = re.compile(r"(?<!\d)\d{4}(?!\d)")
_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\**\s*(\d{4})(?!\d)", re.IGNORECASE)


def make_problem(
    rng: random.Random,
    n_codes: int = N_CODES,
    hops: int = HOPS,
    n_words: int = N_WORDS,
    n_words_after: int = N_WORDS_AFTER,
) -> dict[str, str]:
    """One problem: `n_codes` codes, `n_words` of filler, `hops` shuffled links, a little filler, the question."""
    if n_codes < 1 or hops < 1 or n_codes + hops > len(COLOURS):
        raise ValueError(f"need n_codes >= 1, hops >= 1 and n_codes + hops <= {len(COLOURS)}")
    obj = rng.choice(OBJECTS)
    colours = rng.sample(COLOURS, n_codes + hops)
    coded, chain = colours[:n_codes], colours[n_codes:]
    codes = rng.sample(range(1000, 10000), n_codes)
    target = rng.randrange(n_codes)
    facts = " ".join(f"The secret code of the {c} {obj} is {k}." for c, k in zip(coded, codes, strict=True))
    # chain[0] -> chain[1] -> ... -> coded[target]: each link names the next object along the chain
    steps = [*chain, coded[target]]
    links = [f"The {a} {obj} has the same code as the {b} {obj}." for a, b in itertools.pairwise(steps)]
    shown = links[:]
    rng.shuffle(shown)
    asked = chain[0]
    how = (
        f"First say which {obj} it shares its code with, then give that code."
        if hops == 1
        else "Follow the 'same code' sentences one at a time, then give the code."
    )
    question = (
        f"Read the story and remember the codes.\n\n{facts}\n\n{filler(rng, n_words)}\n\n"
        f"{' '.join(shown)}\n\n{filler(rng, n_words_after)}\n\n"
        f"Question: What is the secret code of the {asked} {obj}? {how}"
    )
    code = str(codes[target])
    cot = "\n".join([*links, f"The secret code of the {coded[target]} {obj} is {code}.", f"Answer: {code}"])
    return {"question": question, "answer": code, "cot": cot}


def make_problems(
    n: int,
    seed: int,
    n_codes: int = N_CODES,
    hops: int = HOPS,
    n_words: int = N_WORDS,
    n_words_after: int = N_WORDS_AFTER,
) -> list[dict[str, str]]:
    """n problems, deterministic for a seed (use TRAIN_SEED for training, EVAL_SEED for held-out)."""
    rng = random.Random(seed)
    return [make_problem(rng, n_codes, hops, n_words, n_words_after) for _ in range(n)]


def split(n_train: int, n_eval: int, **kw: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Training and held-out problems from TRAIN_SEED / EVAL_SEED, with any question seen in training dropped."""
    train = make_problems(n_train, TRAIN_SEED, **kw)
    seen = {p["question"] for p in train}
    held = [p for p in make_problems(n_eval, EVAL_SEED, **kw) if p["question"] not in seen]
    return train, held


def write_jsonl(problems: Iterable[dict[str, str]], path: str | Path) -> Path:
    """Write problems as JSONL with `question`, `answer` and the reference `cot` (readable by train and eval)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            row = {"question": p["question"], "answer": p["answer"]}
            if "cot" in p:
                row["cot"] = p["cot"]
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, str]]:
    """Problems written by `write_jsonl`."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def final_code(text: str) -> str | None:
    """The final answer of a completion: the code on its last 'Answer:' line, else its last four-digit number."""
    tagged = _ANSWER.findall(text)
    if tagged:
        return str(tagged[-1])
    codes = _CODE.findall(text)
    return str(codes[-1]) if codes else None


def score_answer(text: str, answer: str) -> float:
    """1.0 when the completion's final code (`final_code`) is the answer, else 0.0."""
    return float(final_code(text) == str(answer).strip())


def chain_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """TRL reward: 0/1 correctness of each completion's final code."""
    return [score_answer(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]


register_reward("chain", chain_reward)


def main(argv: list[str] | None = None) -> None:
    """`python -m rlkv_edge.reasoning OUT.jsonl [--n N] [--seed SEED] [--codes C] [--hops H] [--words W]`."""
    import argparse

    ap = argparse.ArgumentParser(description="Write linked-code reasoning problems (question, answer, cot) as JSONL.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--codes", type=int, default=N_CODES, help="codes stated at the start")
    ap.add_argument("--hops", type=int, default=HOPS, help="'same code as' links to follow")
    ap.add_argument("--words", type=int, default=N_WORDS, help="filler words between the codes and the links")
    args = ap.parse_args(argv)
    write_jsonl(make_problems(args.n, args.seed, args.codes, args.hops, args.words), args.out)
    print(f"wrote {args.n} problems (seed {args.seed}) to {args.out}")


if __name__ == "__main__":
    main()

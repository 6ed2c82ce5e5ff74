"""A verifiable long-range task family for small models: recall a number stated early in a long text.

Each problem states one fact ("The secret code of the blue box is 4821.") near the start, then a long
stretch of synthetic filler prose (a few hundred tokens, generated here from word lists; nothing is
downloaded), then asks for the number. The answer sits far more than S + W tokens before the question, so
a model whose heads are all local (sinks + recent window) cannot see it: only heads that keep the full
history can carry it. SmolLM2-135M-Instruct answers most of these with a full cache.

    from rlkv_edge.tasks import make_problems, write_jsonl, recall_reward
    problems = make_problems(200, seed=1)        # [{"question", "answer"}], deterministic per seed

`recall_reward` is a TRL reward function (`rlkv-edge train --reward rlkv_edge.tasks:recall_reward`) and
`score_answer` the matching scorer for `rlkv_edge.evaluate` tasks; both accept an answer whose first four-digit
number is the stated one. Training and held-out evaluation use disjoint seeds (TRAIN_SEED, EVAL_SEED). This
module needs neither torch nor llama.cpp.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlkv_edge.scoring import completion_text

TRAIN_SEED = 1000
EVAL_SEED = 2000
TEXT_SEED = 3000
N_WORDS = 130  # filler words per problem: prompts of about 200 tokens, the code ~170 tokens back

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "silver", "brown"]
OBJECTS = ["box", "door", "safe", "locker", "gate", "chest", "drawer", "vault", "cabinet", "trunk"]

_SUBJECTS = [
    "The farmer", "An old sailor", "The baker", "A young teacher", "The mayor", "My neighbour", "The doctor",
    "A tired traveller", "The shopkeeper", "Her brother", "The gardener", "A quiet student", "The painter",
    "The captain", "A small child", "The librarian", "The carpenter", "Our guide", "The musician", "A stranger",
]  # fmt: skip
_VERBS = [
    "walked to", "looked at", "talked about", "cleaned", "painted", "visited", "repaired", "remembered",
    "wrote a letter about", "sang a song about", "drew a picture of", "thought about", "carried water to",
    "waited near", "laughed at", "read a book about", "built a fence around", "planted flowers by",
]  # fmt: skip
_PLACES = [
    "the river", "the old mill", "the market", "the hill", "the bridge", "the harbour", "the forest",
    "the school", "the garden", "the station", "the church", "the village square", "the lake", "the barn",
    "the lighthouse", "the meadow", "the bakery", "the castle", "the orchard", "the well",
]  # fmt: skip
_TAILS = [
    "in the morning", "after lunch", "before the rain", "on a windy day", "late in the evening",
    "with a smile", "for a long time", "without a word", "as the sun went down", "during the festival",
    "while the bells rang", "on the first day of spring", "because it was quiet", "once again",
]  # fmt: skip
_EXTRA = [
    "The weather was mild.", "Nobody else was there.", "Birds were singing in the trees.",
    "It was a pleasant walk.", "The sky was grey and calm.", "A dog barked somewhere far away.",
    "The road was long and dusty.", "Everyone seemed happy that day.", "The air smelled of bread.",
    "Soon it was time to go home.",
]  # fmt: skip


def filler_sentence(rng: random.Random) -> str:
    """One sentence of plain synthetic prose (no digits, so it never competes with the answer)."""
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_PLACES)} {rng.choice(_TAILS)}."
    if rng.random() < 0.3:
        s += " " + rng.choice(_EXTRA)
    return s


def filler(rng: random.Random, n_words: int) -> str:
    """Paragraphs of filler prose with about n_words words."""
    sentences: list[str] = []
    words = 0
    while words < n_words:
        s = filler_sentence(rng)
        sentences.append(s)
        words += len(s.split())
    paras = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paras)


def make_problem(rng: random.Random, n_words: int = N_WORDS, lead_words: int = 0) -> dict[str, str]:
    """One problem: a fact near the start (after ~lead_words words of filler, which put it beyond the sink
    tokens of larger S), ~n_words words of filler, then the question."""
    colour, obj = rng.choice(COLOURS), rng.choice(OBJECTS)
    code = rng.randint(1000, 9999)
    thing = f"the {colour} {obj}"
    lead = f"{filler(rng, lead_words)}\n\n" if lead_words > 0 else ""
    text = (
        f"Read the story and remember the code.\n\n{lead}The secret code of {thing} is {code}.\n\n"
        f"{filler(rng, n_words)}\n\n"
        f"Question: What is the secret code of {thing}? Reply with the four-digit code."
    )
    return {"question": text, "answer": str(code)}


def make_problems(n: int, seed: int, n_words: int = N_WORDS, lead_words: int = 0) -> list[dict[str, str]]:
    """n problems, deterministic for a seed (use TRAIN_SEED for training, EVAL_SEED for held-out)."""
    rng = random.Random(seed)
    return [make_problem(rng, n_words, lead_words) for _ in range(n)]


# (S, W) → (n_words, lead_words): problem sizes whose code sits past the S sinks and more than W tokens
# before the question. (16, 64): the original problems, code at token ~20 of ~200. (64, 256): code at
# token ~107 of ~430 (full cache 12/12, all-local 0/12 on SmolLM2; docs/notes/head-scores-cross-table.md).
# (64, 2048): code past ~1000 tokens of lead and ~3900 tokens before the question (bench/recall_long.py).
RECALL_SIZES = {(16, 64): (N_WORDS, 0), (64, 256): (250, 60), (64, 2048): (3000, 800)}


def recall_size(sink: int, window: int) -> tuple[int, int]:
    """(n_words, lead_words) for local heads with S sinks and a W window: the smallest size in RECALL_SIZES
    that covers both; ValueError when none does (choose n_words / lead_words for make_problems yourself)."""
    for (s, w), size in sorted(RECALL_SIZES.items()):
        if sink <= s and window <= w:
            return size
    raise ValueError(f"no key-recall problem size for S={sink}, W={window} (largest: S64/W256)")


def problems_for(n: int, seed: int, sink: int, window: int) -> list[dict[str, str]]:
    """n problems sized for S and W (see recall_size), deterministic for a seed."""
    return make_problems(n, seed, *recall_size(sink, window))


def long_text(seed: int = TEXT_SEED, n_words: int = 4000) -> str:
    """A long synthetic text for KL / top-1 agreement: facts stated early and recalled much later."""
    rng = random.Random(seed)
    facts = [(rng.choice(COLOURS), rng.choice(OBJECTS), rng.randint(1000, 9999)) for _ in range(12)]
    parts = ["A story in many parts.\n"]
    parts += [f"The secret code of the {c} {o} is {n}." for c, o, n in facts]
    per = n_words // (len(facts) + 1)
    for c, o, n in facts:
        parts.append(filler(rng, per))
        parts.append(f"Later, someone asked for the code of the {c} {o}, and the answer was {n}.")
    parts.append(filler(rng, per))
    return "\n\n".join(parts) + "\n"


def write_jsonl(problems: Iterable[dict[str, str]], path: str | Path) -> Path:
    """Write problems as JSONL with `question` / `prompt` and `answer` (readable by train and eval)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"question": p["question"], "answer": p["answer"]}) + "\n")
    return path


_CODE = re.compile(r"(?<!\d)\d{4}(?!\d)")


def score_answer(text: str, answer: str) -> float:
    """1.0 when the first four-digit number in text is the answer, else 0.0.

    The first, not the last: a small model states the code and then often keeps talking (and the filler
    holds no digits, so any four-digit number it writes is a recalled or made-up code).
    """
    m = _CODE.search(text)
    return float(m is not None and m.group(0) == str(answer).strip())


def recall_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """TRL reward: 0/1 correctness of each completion (its first four-digit number is the stated code)."""
    return [score_answer(completion_text(c), str(a)) for c, a in zip(completions, answer, strict=True)]


def main(argv: list[str] | None = None) -> None:
    """`python -m rlkv_edge.tasks OUT.jsonl [--n N] [--seed SEED] [--words W]`: write problems as JSONL."""
    import argparse

    ap = argparse.ArgumentParser(description="Write key-recall problems (question, answer) as JSONL.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--words", type=int, default=N_WORDS, help="filler words per problem")
    ap.add_argument("--lead-words", type=int, default=0, help="filler words before the code (beyond S sinks)")
    args = ap.parse_args(argv)
    write_jsonl(make_problems(args.n, args.seed, args.words, args.lead_words), args.out)
    print(f"wrote {args.n} problems (seed {args.seed}) to {args.out}")


if __name__ == "__main__":
    main()

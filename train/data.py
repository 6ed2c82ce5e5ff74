"""Training problems (local files, Hugging Face datasets, reasoning-gym), prompts, self-distillation."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
QUESTION_KEYS = ("question", "problem", "prompt", "input", "query")
ANSWER_KEYS = ("answer", "final_answer", "solution", "target", "output")
GYM_PREFIX = "reasoning-gym:"


def _pick(row: dict[str, Any], keys: Sequence[str], what: str) -> Any:
    """The first of keys present in row."""
    for k in keys:
        if k in row and row[k] is not None:
            return row[k]
    raise ValueError(f"no {what} column: expected one of {list(keys)}, got {sorted(row)}")


def normalise_answer(answer: Any) -> str:
    """Reference answer as a string: GSM8K's '... #### 42' gives '42', a full solution its last \\boxed{}."""
    from rlkv_edge.scoring import last_boxed

    text = str(answer).strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = last_boxed(text)
    return boxed.strip() if boxed is not None else text


def _rows_to_problems(rows: Any, n: int | None) -> list[dict[str, str]]:
    """Map dataset rows to {question, answer} dicts."""
    out = []
    for row in rows:
        question = str(_pick(row, QUESTION_KEYS, "question"))
        out.append({"question": question, "answer": normalise_answer(_pick(row, ANSWER_KEYS, "answer"))})
        if n is not None and len(out) >= n:
            break
    return out


def load_problems(spec: str, n: int | None = None, seed: int = 0, split: str = "train") -> list[dict[str, str]]:
    """Problems from ``reasoning-gym:NAME``, a .jsonl/.json/.parquet/.csv file or HF ``name[:config]``."""
    if spec.startswith(GYM_PREFIX):
        import reasoning_gym

        name = spec[len(GYM_PREFIX) :] or "basic_arithmetic"
        ds = reasoning_gym.create_dataset(name, size=n or 1000, seed=seed)
        return [{"question": str(x["question"]), "answer": str(x["answer"])} for x in ds]
    import datasets

    path = Path(spec)
    if path.suffix in {".jsonl", ".json", ".parquet", ".csv"}:
        if not path.exists():
            raise FileNotFoundError(f"dataset file not found: {spec}")
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}[path.suffix]
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    else:
        name, _, config = spec.partition(":")
        ds = datasets.load_dataset(name, config or None, split=split)
    if seed is not None:
        ds = ds.shuffle(seed=seed)
    return _rows_to_problems(ds, n)


def make_prompt(question: str, conversational: bool = True, template: str = PROMPT_TEMPLATE) -> Any:
    """The prompt in TRL's format: a one-message conversation, or plain text (no chat template)."""
    text = template.format(question=question)
    return [{"role": "user", "content": text}] if conversational else text


def to_dataset(problems: list[dict[str, str]], conversational: bool = True, template: str = PROMPT_TEMPLATE) -> Any:
    """A ``datasets.Dataset`` with the ``prompt`` and ``answer`` columns GRPOTrainer and rewards use."""
    import datasets

    return datasets.Dataset.from_list(
        [{"prompt": make_prompt(p["question"], conversational, template), "answer": p["answer"]} for p in problems]
    )


@dataclass
class Bucket:
    """A solution-length bucket [lo, hi) in tokens and how many problems to keep from it."""

    lo: int
    hi: int
    count: int


PAPER_BUCKETS = [
    Bucket(0, 2048, 600),
    Bucket(2048, 4096, 600),
    Bucket(4096, 6144, 1000),
    Bucket(6144, 8192, 800),
]


def parse_buckets(spec: str) -> list[Bucket]:
    """Buckets from 'lo-hi:count,...' (e.g. '0-2048:600,2048-4096:600')."""
    out = []
    for part in filter(None, (s.strip() for s in spec.split(","))):
        rng, _, count = part.partition(":")
        lo, _, hi = rng.partition("-")
        out.append(Bucket(int(lo), int(hi), int(count)))
    return out


def stratify(solved: list[tuple[dict[str, str], int]], buckets: list[Bucket], seed: int = 0) -> list[dict[str, str]]:
    """Keep up to ``count`` solved problems per solution-length bucket (random within a bucket)."""
    rng = random.Random(seed)
    keep: list[dict[str, str]] = []
    for b in buckets:
        members = [p for p, length in solved if b.lo <= length < b.hi]
        rng.shuffle(members)
        keep.extend(members[: b.count])
    return keep


def self_distill(
    model: Any,
    tokenizer: Any,
    problems: list[dict[str, str]],
    reward: Callable[..., list[float]],
    buckets: list[Bucket],
    max_new_tokens: int = 8192,
    batch_size: int = 8,
    conversational: bool = True,
    seed: int = 0,
    progress: Callable[[int, int, int], None] | None = None,
    template: str = PROMPT_TEMPLATE,
) -> list[dict[str, str]]:
    """Greedy-decode with the unmodified model; keep solved problems, stratified by solution length."""
    import torch

    solved: list[tuple[dict[str, str], int]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(problems), batch_size):
            batch = problems[start : start + batch_size]
            prompts = [make_prompt(p["question"], conversational, template) for p in batch]
            if conversational:
                texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
            else:
                texts = prompts
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not conversational)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            gen = out[:, enc["input_ids"].shape[1] :]
            lengths = [int((row != tokenizer.pad_token_id).sum()) for row in gen]
            completions = tokenizer.batch_decode(gen, skip_special_tokens=True)
            rewards = reward(completions=completions, answer=[p["answer"] for p in batch])
            solved.extend((p, n) for p, n, r in zip(batch, lengths, rewards, strict=True) if r >= 1.0)
            if progress is not None:
                progress(min(start + batch_size, len(problems)), len(problems), len(solved))
    finally:
        tokenizer.padding_side = side
    return stratify(solved, buckets, seed)

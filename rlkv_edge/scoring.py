"""Answer scoring shared by `eval` and training: extracting a final answer, one normaliser, and verifiable
0/1 rewards in TRL's reward-function form with a registry for plug-ins (math-verify is optional)."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list[float]]

_BOXED = re.compile(r"\\boxed\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_LINE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*(.+)", re.IGNORECASE)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (balanced braces), if any."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer: <answer> tags, the last \\boxed{}, '####', an 'Answer: ...' line, else the last line."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    if tagged:
        return str(tagged[-1]).strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail:
            return tail.splitlines()[0].strip().rstrip(".")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = _ANSWER_LINE.search(ln)
        if m:
            return m.group(1).strip().rstrip(".").strip("*").strip()
    return lines[-1] if lines else None


def normalise(s: str) -> str:
    """Lower-case, without whitespace, surrounding $ and a trailing period."""
    return re.sub(r"\s+", "", s).strip("$").rstrip(".").lower()


def answers_match(got: str | None, reference: str) -> bool:
    """Equal after `normalise`, or, for a numeric reference, the last number in `got` equals it."""
    if got is None:
        return False
    if normalise(got) == normalise(reference):
        return True
    want = _NUMBER.fullmatch(reference.strip().replace(" ", ""))
    numbers = _NUMBER.findall(got)
    if not (want and numbers):
        return False
    try:
        return math.isclose(float(numbers[-1].replace(",", "")), float(reference.replace(",", "")), rel_tol=1e-9)
    except ValueError:
        return False


def exact_match_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1.0 when the extracted answer matches the reference (`answers_match`)."""
    out = []
    for completion, ref in zip(completions, answer, strict=True):
        out.append(float(answers_match(extract_answer(completion_text(completion)), str(ref))))
    return out


def math_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1.0 when math-verify finds the completion's answer equivalent to the reference."""
    from math_verify import parse, verify

    out = []
    for completion, ref in zip(completions, answer, strict=True):
        text = completion_text(completion)
        pred = extract_answer(text)
        if pred is None:
            out.append(0.0)
            continue
        try:
            gold = parse(f"${ref}$") or parse(str(ref))
            guess = parse(f"${pred}$") or parse(text)
            ok = bool(gold) and bool(guess) and bool(verify(gold, guess))
        except Exception:  # math-verify raises on malformed LaTeX; count it as wrong
            ok = False
        out.append(float(ok or answers_match(pred, str(ref))))
    return out


REWARDS: dict[str, RewardFn] = {"math": math_reward, "exact": exact_match_reward}


def register_reward(name: str, fn: RewardFn) -> None:
    """Make a reward function available by name (``--reward NAME``)."""
    REWARDS[name] = fn


_FAMILY_REWARDS = {"chain": "rlkv_edge.reasoning", "trace": "rlkv_edge.program_trace"}


def get_reward(spec: str) -> RewardFn:
    """A reward by registered name, or ``package.module:function`` for a plug-in."""
    if spec in _FAMILY_REWARDS and spec not in REWARDS:  # the task families register theirs on import
        importlib.import_module(_FAMILY_REWARDS[spec])
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" in spec:
        module, attr = spec.split(":", 1)
        fn = getattr(importlib.import_module(module), attr)
        if not callable(fn):
            raise ValueError(f"{spec} is not callable")
        return fn  # type: ignore[no-any-return]
    raise ValueError(f"unknown reward {spec!r}: use one of {sorted(REWARDS)} or 'module:function'")

"""Verifiable 0/1 correctness rewards in TRL's reward-function form, and a registry to plug in others."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list[float]]

_BOXED = re.compile(r"\\boxed\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


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
    """Final answer: the last \\boxed{}, else after '####' or 'answer:', else the last number."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for marker in ("####", "answer is", "answer:", "Answer:"):
        if marker in text:
            tail = text.rsplit(marker, 1)[1].strip().strip(".").strip()
            if tail:
                return tail.splitlines()[0].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _normalise(s: str) -> str:
    """Lower-case, strip whitespace, $ and a trailing period."""
    return re.sub(r"\s+", "", s).strip("$").rstrip(".").lower()


def exact_match_reward(completions: list[Any], answer: list[Any], **_: Any) -> list[float]:
    """1.0 when the extracted answer equals the reference after normalisation."""
    out = []
    for completion, ref in zip(completions, answer, strict=True):
        pred = extract_answer(completion_text(completion))
        out.append(float(pred is not None and _normalise(pred) == _normalise(str(ref))))
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
        out.append(float(ok or _normalise(pred) == _normalise(str(ref))))
    return out


REWARDS: dict[str, RewardFn] = {"math": math_reward, "exact": exact_match_reward}


def register_reward(name: str, fn: RewardFn) -> None:
    """Make a reward function available by name (``--reward NAME``)."""
    REWARDS[name] = fn


def get_reward(spec: str) -> RewardFn:
    """A reward by registered name, or ``package.module:function`` for a plug-in."""
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" in spec:
        module, attr = spec.split(":", 1)
        fn = getattr(importlib.import_module(module), attr)
        if not callable(fn):
            raise ValueError(f"{spec} is not callable")
        return fn  # type: ignore[no-any-return]
    raise ValueError(f"unknown reward {spec!r}: use one of {sorted(REWARDS)} or 'module:function'")

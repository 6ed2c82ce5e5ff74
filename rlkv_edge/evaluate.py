"""`rlkv-edge eval`: quality at several sparsities against the same model without compression.

* `--tasks FILE.jsonl` (one `{"prompt": ..., "answer": ...}` per line) or `--tasks reasoning-gym:NAME`:
  greedy answers through the model's chat template; accuracy, mean output length in tokens and the
  share of answers cut off by `--max-tokens`. By default a system prompt asks for a final
  'Answer: ...' line and that answer is scored; `--system ""` sends the prompt alone and `--reward`
  scores the whole answer with a training reward (`exact`, `math` or `module:function`).
* `--text FILE`: next-token distributions over the text; mean KL(uncompressed ‖ compressed) and top-1
  agreement. The baseline is the same file at s = 0 (every head full), so KL at s = 0 is exactly 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlkv_edge.errors import DataError, UsageError
from rlkv_edge.models import ModelFile, open_model, read_model, sparsity_configs
from rlkv_edge.scoring import RewardFn, answers_match, extract_answer, get_reward

SYSTEM_PROMPT = (
    "Solve the problem. Think step by step if needed, then give the final answer on the last line as "
    "'Answer: <answer>'."
)


@dataclass
class Task:
    """One problem: the prompt, the reference answer, and optionally a scorer (answer text -> 0..1)."""

    prompt: str
    answer: str
    score: Callable[[str], float] | None = None


@dataclass
class TaskResult:
    """Task metrics of one configuration."""

    label: str
    sparsity: float | None
    n: int
    accuracy: float
    mean_output_tokens: float
    cut_off: float
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TextResult:
    """Next-token agreement of one configuration with the uncompressed model over a text."""

    label: str
    sparsity: float | None
    n_tokens: int  # positions scored
    mean_kl: float
    top1_agreement: float


def load_tasks(spec: str, limit: int | None = None, seed: int = 0) -> list[Task]:
    """Tasks from a JSONL file or `reasoning-gym:NAME` (generated offline, `limit` problems, default 20)."""
    if spec.startswith("reasoning-gym:"):
        name = spec.split(":", 1)[1]
        try:
            import reasoning_gym
        except ImportError:
            raise DataError("reasoning-gym tasks need the reasoning-gym package (pip install reasoning-gym)") from None
        try:
            ds = reasoning_gym.create_dataset(name, size=limit or 20, seed=seed)
        except Exception as e:
            raise DataError(f"reasoning-gym dataset '{name}': {e}") from None
        tasks = []
        for entry in ds:

            def scorer(text: str, entry: dict[str, Any] = entry) -> float:
                return float(ds.score_answer(text, entry) or 0.0)

            tasks.append(Task(entry["question"], str(entry["answer"]), scorer))
        return tasks
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"tasks file not found: {path}")
    tasks = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: each line must be a JSON object with 'prompt' and 'answer'")
            prompt = obj.get("prompt", obj.get("question"))
            answer = obj.get("answer")
            if not isinstance(prompt, str) or answer is None or isinstance(answer, (dict, list)):
                raise DataError(f"{path}:{i}: needs a string 'prompt' (or 'question') and a scalar 'answer'")
            tasks.append(Task(prompt, str(answer)))
    if not tasks:
        raise DataError(f"{path}: no tasks in the file")
    return tasks[:limit] if limit else tasks


def is_correct(output: str, task: Task, reward: RewardFn | None = None) -> bool:
    """Scored by `reward` on the whole output, else the task's own scorer, else exact match (numbers as numbers)."""
    if reward is not None:
        return float(reward([output], [task.answer])[0]) >= 1.0
    got = extract_answer(output)
    if task.score is not None:
        return task.score(got or "") >= 1.0
    return answers_match(got, task.answer)


def run_tasks(
    llm: Any,
    tasks: Sequence[Task],
    *,
    max_tokens: int,
    label: str,
    sparsity: float | None,
    system: str | None = SYSTEM_PROMPT,
    reward: RewardFn | None = None,
) -> TaskResult:
    """Greedy answers to every task with the model's chat template (and `system` as the system prompt)."""
    outputs = []
    n_ok = n_cut = n_tok = 0
    for t in tasks:
        llm.reset()
        messages = [{"role": "system", "content": system}] if system else []
        r = llm.create_chat_completion(
            messages=[*messages, {"role": "user", "content": t.prompt}],
            temperature=0.0,
            max_tokens=max_tokens,
            seed=0,
        )
        text = r["choices"][0]["message"]["content"] or ""
        ok = is_correct(text, t, reward)
        cut = r["choices"][0].get("finish_reason") == "length"
        n_ok += ok
        n_cut += cut
        tokens = int(r["usage"]["completion_tokens"])
        n_tok += tokens
        outputs.append(
            {
                "answer": t.answer,
                "extracted": extract_answer(text) or "",
                "correct": ok,
                "cut_off": cut,
                "tokens": tokens,
            }
        )
    n = len(tasks)
    return TaskResult(label, sparsity, n, n_ok / n, n_tok / n, n_cut / n, outputs)


def text_logprobs(llm: Any, tokens: Sequence[int], chunk: int = 256) -> np.ndarray:
    """log softmax of the next-token logits at every position of `tokens` (llm built with logits_all)."""
    llm.reset()
    llm.eval(list(tokens))
    out = np.empty((len(tokens), llm.n_vocab()), dtype=np.float32)
    for i in range(0, len(tokens), chunk):
        x = np.asarray(llm.scores[i : min(i + chunk, len(tokens))], dtype=np.float64)
        x -= x.max(axis=1, keepdims=True)
        out[i : i + len(x)] = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return out


def tail_logprobs(llm: Any, tokens: Sequence[int], n_scored: int) -> np.ndarray:
    """log softmax of the next-token logits at the last `n_scored` positions of `tokens`, for a model loaded
    without logits_all: the prefix is evaluated keeping no logits, so a 32k-token text over a 150k vocabulary
    needs [n_scored, n_vocab] floats, not [n_ctx, n_vocab] (llama-cpp-python's logits_all array)."""
    n_scored = min(n_scored, len(tokens))
    start = len(tokens) - n_scored
    llm.reset()
    if start:
        llm.eval(list(tokens[:start]))
    out = np.empty((n_scored, llm.n_vocab()), dtype=np.float32)
    for i in range(start, len(tokens), llm.n_batch):
        chunk = list(tokens[i : min(len(tokens), i + llm.n_batch)])
        # one batch with logits at every token: what Llama.eval does with logits_all, without its n_ctx array
        llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=True)
        llm._ctx.decode(llm._batch)
        llm.input_ids[llm.n_tokens : llm.n_tokens + len(chunk)] = chunk
        llm.n_tokens += len(chunk)
        x = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), llm.n_vocab())).astype(np.float64)
        x -= x.max(axis=1, keepdims=True)
        out[i - start : i - start + len(chunk)] = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    return out


def compare_logprobs(base: np.ndarray, other: np.ndarray, chunk: int = 256) -> tuple[float, float]:
    """Mean KL(base ‖ other) in nats and top-1 agreement over positions."""
    kl_sum, agree = 0.0, 0
    for i in range(0, len(base), chunk):
        b = base[i : i + chunk].astype(np.float64)
        o = other[i : i + chunk].astype(np.float64)
        kl_sum += float(np.maximum((np.exp(b) * (b - o)).sum(axis=1), 0.0).sum())
        agree += int((b.argmax(axis=1) == o.argmax(axis=1)).sum())
    return kl_sum / len(base), agree / len(base)


def scored_chunks(tokens: Sequence[int], n_ctx: int, chunks: int | None, bos: int) -> list[tuple[list[int], slice]]:
    """The token windows a text is evaluated in and the positions of each that are scored.

    chunks None: one window, the first n_ctx tokens, every position. Otherwise llama-perplexity's way: the text
    (BOS first) cut into n_ctx-token chunks, each chunk's first token replaced by BOS, the second half of every
    chunk scored (positions n_ctx/2 .. n_ctx-2, whose next tokens are in the chunk); at most `chunks` of them, all
    when chunks < 0. DataError if the text does not fill one chunk."""
    if chunks is None:
        return [(list(tokens[:n_ctx]), slice(0, None))]
    n = len(tokens) // n_ctx
    if n == 0:
        raise DataError(f"the text has {len(tokens)} tokens: --chunks needs at least one chunk of --ctx {n_ctx}")
    if chunks >= 0:
        n = min(n, chunks)
    return [([bos, *tokens[c * n_ctx + 1 : (c + 1) * n_ctx]], slice(n_ctx // 2, n_ctx - 1)) for c in range(n)]


def load_reward(spec: str) -> RewardFn:
    """A training reward by name or `module:function` (see `rlkv-edge train --reward`); UsageError if unknown."""
    try:
        return get_reward(spec)
    except (ImportError, AttributeError, ValueError) as e:
        raise UsageError(f"--reward {spec}: {e}") from None


def read_text_file(path: Path) -> str:
    """A UTF-8 text file for --text; DataError if it cannot be read or is empty."""
    try:
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read text file {path}: {e}") from None
    if not body.strip():
        raise DataError(f"{path}: the text file is empty")
    return body


def text_tokens(model: ModelFile, path: Path, n_tokens: int, min_tokens: int = 16) -> list[int]:
    """The first n_tokens tokens of a UTF-8 text file as `model` tokenizes it (BOS first); DataError if the text
    gives fewer than min_tokens."""
    body = read_text_file(path)
    probe = open_model(model, n_ctx=512, sparsity=0.0 if model.converted else None, n_threads=1)
    try:
        tokens = probe.tokenize(body.encode("utf-8"), add_bos=True)[:n_tokens]
    finally:
        probe.close()
    if len(tokens) < min_tokens:
        raise DataError(f"{path}: the text is too short ({len(tokens)} tokens, need at least {min_tokens})")
    return tokens


def evaluate(
    model: ModelFile | Path,
    *,
    tasks: str | None = None,
    text: Path | None = None,
    sparsities: Sequence[float] = (),
    n_ctx: int = 2048,
    max_tokens: int = 256,
    limit: int | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    type_k: str | None = None,
    type_v: str | None = None,
    system: str | None = SYSTEM_PROMPT,
    reward: str | None = None,
    chunks: int | None = None,
    log: Callable[[str], None] | None = None,
    load_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the task and/or text evaluation for no compression and each sparsity; a JSON-ready dict (load_kwargs go
    to llama-cpp-python's Llama: flash_attn, n_batch, n_ubatch, use_mmap, use_mlock)."""
    if tasks is None and text is None:
        raise UsageError("give --tasks and/or --text")
    if chunks is not None and text is None:
        raise UsageError("--chunks needs --text")
    if chunks == 0:
        raise UsageError("--chunks must be positive, or -1 for every chunk")
    if not isinstance(model, ModelFile):
        model = read_model(model)
    configs = sparsity_configs(model, sparsities)
    task_list = load_tasks(tasks, limit) if tasks else []
    reward_fn = load_reward(reward) if reward else None
    text_str = read_text_file(text) if text is not None else None
    load: dict[str, Any] = dict(n_gpu_layers=n_gpu_layers, type_k=type_k, type_v=type_v, logits_all=text is not None)
    if n_threads:
        load["n_threads"] = n_threads
    load.update(load_kwargs or {})
    out: dict[str, Any] = {"model": str(model.path), "n_ctx": n_ctx, "tasks": None, "text": None}
    task_results: list[TaskResult] = []
    text_results: list[TextResult] = []
    base_lp: np.ndarray | None = None
    windows: list[tuple[list[int], slice]] = []
    for label, s in configs:
        if log:
            log(f"{label}: loading {model.path.name}")
        llm = open_model(model, n_ctx=n_ctx, sparsity=s, **load)
        try:
            if task_list:
                tr = run_tasks(
                    llm, task_list, max_tokens=max_tokens, label=label, sparsity=s, system=system, reward=reward_fn
                )
                task_results.append(tr)
                if log:
                    log(
                        f"{label}: accuracy {tr.accuracy:.3f}, mean length {tr.mean_output_tokens:.1f}, "
                        f"cut off {tr.cut_off:.3f}"
                    )
            if text_str is not None:
                if not windows:
                    all_tokens = llm.tokenize(text_str.encode("utf-8"), add_bos=True)
                    if len(all_tokens) < 2:
                        raise DataError(f"{text}: the text is too short")
                    windows = scored_chunks(all_tokens, n_ctx, chunks, llm.token_bos())
                # lp: [positions, n_vocab], the scored positions of every window, in order
                lp = np.concatenate([text_logprobs(llm, w)[scored] for w, scored in windows])
                if base_lp is None:
                    base_lp = lp
                kl, agree = compare_logprobs(base_lp, lp)
                text_results.append(TextResult(label, s, len(lp), kl, agree))
                if log:
                    log(f"{label}: mean KL {kl:.5f} nats, top-1 agreement {agree:.4f} over {len(lp)} positions")
        finally:
            llm.close()
    if task_results:
        out["tasks"] = {
            "source": tasks,
            "system": system,
            "reward": reward,
            "max_tokens": max_tokens,
            "results": [tr.__dict__ for tr in task_results],
        }
    if text_results:
        scoring = (
            "every position of the first n_ctx tokens"
            if chunks is None
            else (f"llama-perplexity's: the second half of each of {len(windows)} chunks of n_ctx tokens")
        )
        out["text"] = {"source": str(text), "scoring": scoring, "results": [t.__dict__ for t in text_results]}
    return out


def render(out: dict[str, Any]) -> str:
    """Markdown tables of an evaluate() result."""
    parts = []
    if out.get("tasks"):
        base = out["tasks"]["results"][0]
        rows = [
            f"tasks: {out['tasks']['source']} ({base['n']} problems, greedy, max {out['tasks']['max_tokens']} tokens)",
            "",
            "| model | sparsity | accuracy | Δ vs none | mean output tokens | cut off |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in out["tasks"]["results"]:
            s = "none" if r["sparsity"] is None else f"{r['sparsity']:.4g}"
            rows.append(
                f"| {r['label']} | {s} | {r['accuracy']:.3f} | {r['accuracy'] - base['accuracy']:+.3f} | "
                f"{r['mean_output_tokens']:.1f} | {r['cut_off']:.3f} |"
            )
        parts.append("\n".join(rows))
    if out.get("text"):
        first = out["text"]["results"][0]
        rows = [
            f"text: {out['text']['source']} ({first['n_tokens']} positions, scoring "
            f"{out['text'].get('scoring', 'every position')}), against the model without compression",
            "",
            "| model | sparsity | mean KL (nats) | top-1 agreement |",
            "|---|---:|---:|---:|",
        ]
        for r in out["text"]["results"]:
            s = "none" if r["sparsity"] is None else f"{r['sparsity']:.4g}"
            rows.append(f"| {r['label']} | {s} | {r['mean_kl']:.5f} | {r['top1_agreement']:.4f} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)

"""Key recall at depth on the 32k model (issue 27): what the full heads buy that KL alone does not show.

A real long text (the Debian licences of bench/long_front.py, which no heads file was fitted on) carries --n facts
("The access code of vault NAME is 12345."), spread over its first part so that every fact lies at least --gap
tokens before the end; then each fact is asked for ("… The access code of vault NAME is") and the next greedy
tokens must hold its number. Each configuration prefills the text once; every question is asked from a saved
state of that prefill (llama_state_get/set_data), so a configuration costs one long prefill and --n short decodes.

Configurations, as bench/long_front.py's: q8_0/q8_0 with every head full (the model's default), rlkv at s with the
shipped heads and the same types, all-local at equal memory with the same types (its window widened until its ring
holds as many cells as the rlkv point's caches), and --n-random random masks at the rlkv point.

    .venv/bin/python bench/recall_depth.py --tokens 16384 --out bench/results/qwen_recall_16k.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from long_front import equal_memory_window, long_text
from record import save_record

from rlkv_edge.catalog import find
from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores, load_heads
from rlkv_edge.memory import kv_memory
from rlkv_edge.models import open_model, read_model

NAMES = ("amber", "birch", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "indigo", "juniper", "kestrel",
         "lumen", "meadow", "nickel", "onyx", "prairie", "quartz", "raven", "saffron", "tundra")  # fmt: skip
N_ANSWER = 8  # greedy tokens after the question


def fact(name: str, code: int) -> str:
    """The sentence that states one fact."""
    return f" The access code of vault {name} is {code}. "


def question(name: str) -> str:
    """The text that asks for it (the model completes the sentence)."""
    return f"\n\nQuestion: What is the access code of vault {name}?\nAnswer: The access code of vault {name} is"


def build_prompt(llm: Any, n_tokens: int, n_facts: int, gap: int, seed: int) -> tuple[list[int], list[dict]]:
    """The text of n_tokens tokens with the facts inserted (each >= gap tokens before its end) and the facts."""
    rng = np.random.default_rng(seed)
    names = [str(x) for x in rng.choice(NAMES, size=n_facts, replace=False)]
    codes = [int(x) for x in rng.integers(10000, 100000, size=n_facts)]
    pieces = [llm.tokenize(fact(n, c).encode(), add_bos=False) for n, c in zip(names, codes, strict=True)]
    filler = llm.tokenize(long_text().encode("utf-8"), add_bos=False)[: n_tokens - sum(map(len, pieces))]
    if len(filler) + sum(map(len, pieces)) < n_tokens:
        raise SystemExit(f"the text has only {len(filler)} tokens")
    last = n_tokens - gap - max(map(len, pieces))  # the latest start that keeps a fact >= gap tokens from the end
    starts = np.linspace(n_tokens // 20, last, n_facts).astype(int)
    tokens: list[int] = []
    facts = []
    used = 0  # filler tokens placed so far
    for start, piece, name, code in zip(starts, pieces, names, codes, strict=True):
        take = max(0, int(start) - len(tokens))
        tokens += filler[used : used + take]
        used += take
        facts.append({"name": name, "code": code, "position": len(tokens)})
        tokens += piece
    tokens += filler[used : used + n_tokens - len(tokens)]
    for f in facts:
        f["distance"] = len(tokens) - f["position"]
    return tokens, facts


def greedy(llm: Any, prompt: list[int], n: int) -> list[int]:
    """Evaluate prompt after what the context holds, then n greedy tokens."""
    out: list[int] = []
    llm.eval(prompt)
    for _ in range(n):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        out.append(int(np.argmax(logits)))
        llm.eval([out[-1]])
    return out


def recall(cfg: dict[str, Any], tokens: list[int], facts: list[dict], threads: int) -> dict[str, Any]:
    """Prefill tokens once under cfg, then ask every fact from the saved state; accuracy and answers."""
    from rlkv_edge import runtime

    llm = open_model(
        cfg["path"], n_ctx=len(tokens) + 64, sparsity=cfg["sparsity"], sink=cfg["sink"], window=cfg["window"],
        type_k=cfg["type_k"], type_v=cfg["type_v"], n_threads=threads, n_threads_batch=threads, n_batch=512,
        n_ubatch=512,
    )  # fmt: skip
    try:
        full, local = runtime.kv_bytes(llm)
        llm.reset()
        llm.eval(tokens)
        state = llm.save_state()
        answers = []
        for f in facts:
            llm.load_state(state)
            out = llm.detokenize(greedy(llm, llm.tokenize(question(f["name"]).encode(), add_bos=False), N_ANSWER))
            text = out.decode("utf-8", errors="replace")
            got = re.search(r"\d{5}", text)
            answers.append({**f, "answer": text, "correct": bool(got and int(got.group()) == f["code"])})
    finally:
        llm.close()
    acc = sum(a["correct"] for a in answers) / len(answers)
    return {"label": cfg["label"], "kv_bytes": full + local, "accuracy": acc, "answers": answers}


def main(argv: list[str] | None = None) -> int:
    """Measure, print and save recall at one depth."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="plain GGUF or catalog name")
    ap.add_argument("--heads", type=Path, default=Path("rlkv_edge/data/qwen2.5-coder-0.5b_heads.json"))
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--n", type=int, default=12, help="facts (questions)")
    ap.add_argument("--gap", type=int, default=8192, help="fewest tokens between a fact and the questions")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--types", default="q8_0/q8_0", help="K/V cache types of every configuration")
    ap.add_argument("--heads-also", action="append", default=[], metavar="NAME=FILE",
                    help="another head set at the rlkv point, its row labelled [NAME] (repeatable)")  # fmt: skip
    ap.add_argument("--n-random", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", default=None, metavar="TEXT", help="labels containing TEXT only")
    ap.add_argument("--cache", type=Path, default=None, help="JSONL of measured configurations (resume, share)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.n > len(NAMES):
        raise SystemExit(f"--n is at most {len(NAMES)}")
    t0 = time.time()
    tk, tv = args.types.split("/")
    entry = find(args.model)
    src = Path(entry.gguf() or "") if entry else Path(args.model)
    heads = load_heads(args.heads)
    s, S, W = args.sparsity, args.sink, args.window
    done: dict[str, dict] = {}
    if args.cache and args.cache.is_file():
        done = {r["label"]: r for r in map(json.loads, args.cache.read_text().splitlines()) if r}
    with tempfile.TemporaryDirectory(prefix="rlkv-recall-") as tmp:
        conv = Path(tmp) / "heads.rlkv.gguf"
        convert_gguf(src, HeadScores(heads.scores, S, W, "recall", heads.model, {}), conv)
        info = read_model(conv).info
        target = kv_memory(info, s, args.tokens, tk, tv, sink=S, window=W)["kv_bytes_compressed"]
        wl = equal_memory_window(info, target, args.tokens, tk, tv, S)
        base = {"type_k": tk, "type_v": tv}
        configs = [
            {"label": f"{args.types} full", "path": src, "sparsity": None, "sink": None, "window": None, **base},
            {"label": f"rlkv s={s:g} S{S}/W{W} {args.types}", "path": conv, "sparsity": s, "sink": S, "window": W,
             **base},
            {"label": f"all-local S{S}/W{wl} {args.types} (= memory of s={s:g} W{W})", "path": conv, "sparsity": 1.0,
             "sink": S, "window": wl, **base},
        ]  # fmt: skip
        for spec in args.heads_also:
            name, _, file = spec.partition("=")
            if not file:
                raise SystemExit(f"--heads-also wants NAME=FILE, got {spec!r}")
            dst = Path(tmp) / f"{name}.rlkv.gguf"
            other = load_heads(Path(file))
            convert_gguf(src, HeadScores(other.scores, S, W, name, other.model, {}), dst)
            label = f"rlkv s={s:g} S{S}/W{W} {args.types} [{name}]"
            configs.append({"label": label, "path": dst, "sparsity": s, "sink": S, "window": W, **base})
        for seed in range(args.n_random):
            dst = Path(tmp) / f"random-{seed}.rlkv.gguf"
            scores = np.random.default_rng(seed).random(heads.scores.shape).astype(np.float32)
            convert_gguf(src, HeadScores(scores, S, W, f"random {seed}", heads.model, {}), dst)
            label = f"random-{seed} s={s:g} S{S}/W{W} {args.types}"
            configs.append({"label": label, "path": dst, "sparsity": s, "sink": S, "window": W, **base})
        probe = open_model(src, n_ctx=512, n_threads=1)
        tokens, facts = build_prompt(probe, args.tokens, args.n, args.gap, args.seed)
        probe.close()
        for cfg in configs:
            if cfg["label"] in done or (args.only and not any(t in cfg["label"] for t in args.only)):
                continue
            row = recall(cfg, tokens, facts, args.threads)
            row["seconds"] = round(time.time() - t0)
            done[cfg["label"]] = row
            print(f"[{time.time() - t0:6.0f}s] {row['label']}: recall {row['accuracy']:.0%}", file=sys.stderr)
            if args.cache:
                with args.cache.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    rows = [done[c["label"]] for c in configs if c["label"] in done]
    f16 = kv_memory(info, 0.0, args.tokens, "f16", "f16")["kv_bytes_uncompressed"]
    print("| config | KV MiB | × f16 | recall |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['label']} | {r['kv_bytes'] / 2**20:.1f} | {r['kv_bytes'] / f16:.3f} | {r['accuracy']:.0%} |")
    record = {
        "model": src.name, "heads": str(args.heads), "heads_also": args.heads_also, "n_tokens": args.tokens,
        "n_facts": args.n, "gap": args.gap,
        "min_distance": min(f["distance"] for f in facts), "seed": args.seed, "answer_tokens": N_ANSWER,
        "kv_bytes_f16": f16,
        "text": "Debian licences (bench/long_front.py) with the facts inserted", "threads": args.threads,
        "rows": rows,
    }  # fmt: skip
    save_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

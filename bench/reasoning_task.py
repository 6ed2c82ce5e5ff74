"""The linked-code reasoning task (rlkv_edge.reasoning) on the bundled SmolLM2: full cache against all-local.

Held-out problems (seed EVAL_SEED) answered greedily through the chat template with no system prompt (the
template adds SmolLM2's own), at sparsity 0 (every head full) and sparsity 1 (every head keeps only S sinks
+ a window of W), for S16/W64 (the shipped file's) and S64/W256; scored by `rlkv_edge.reasoning.score_answer`.
Prints a table and writes bench/results/reasoning_task.json with accuracy, mean prompt + completion tokens,
wall time, the task settings, the threads and the machine.

    OMP_NUM_THREADS=2 .venv/bin/python bench/reasoning_task.py [--n 40] [--threads 2] [--max-tokens 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("full", 0.0, 16, 64), ("all-local", 1.0, 16, 64), ("full", 0.0, 64, 256), ("all-local", 1.0, 64, 256)]


def run_config(model: Path, problems: list[dict[str, str]], s: float, sink: int, window: int, args: Any) -> dict:
    """Greedy answers at one (sparsity, S, W): accuracy, mean prompt + completion tokens, wall time."""
    from rlkv_edge.models import open_model
    from rlkv_edge.reasoning import score_answer

    llm = open_model(model, n_ctx=args.ctx, sparsity=s, sink=sink, window=window, n_threads=args.threads)
    t0 = time.perf_counter()
    ok = prompt_tok = out_tok = 0
    outputs = []
    try:
        for p in problems:
            llm.reset()
            r = llm.create_chat_completion(
                messages=[{"role": "user", "content": p["question"]}],
                temperature=0.0,
                max_tokens=args.max_tokens,
                seed=0,
            )
            text = r["choices"][0]["message"]["content"] or ""
            good = score_answer(text, p["answer"]) >= 1.0
            ok += good
            prompt_tok += int(r["usage"]["prompt_tokens"])
            out_tok += int(r["usage"]["completion_tokens"])
            outputs.append({"answer": p["answer"], "correct": good, "text": text})
    finally:
        llm.close()
    n = len(problems)
    return {
        "sparsity": s,
        "sink": sink,
        "window": window,
        "n": n,
        "accuracy": ok / n,
        "mean_prompt_tokens": prompt_tok / n,
        "mean_completion_tokens": out_tok / n,
        "mean_total_tokens": (prompt_tok + out_tok) / n,
        "wall_s": time.perf_counter() - t0,
        "outputs": outputs[: args.keep_outputs],
    }


def render(results: list[dict]) -> str:
    """A markdown table of the configurations."""
    rows = [
        "| cache | S | W | accuracy | mean prompt + completion tokens | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r['label']} | {r['sink']} | {r['window']} | {r['accuracy']:.3f} | "
            f"{r['mean_prompt_tokens']:.0f} + {r['mean_completion_tokens']:.0f} = {r['mean_total_tokens']:.0f} | "
            f"{r['wall_s']:.0f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Measure the task on the bundled model at s = 0 and s = 1 for both S/W settings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="held-out problems")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--keep-outputs", type=int, default=5, help="answers kept in the JSON per configuration")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reasoning_task.json")
    args = ap.parse_args(argv)

    from rlkv_edge import reasoning
    from rlkv_edge.atomic import atomic_write_text
    from rlkv_edge.cli.options import default_model

    model = default_model().path
    problems = reasoning.make_problems(args.n, reasoning.EVAL_SEED)
    results = []
    t0 = time.perf_counter()
    for label, s, sink, window in CONFIGS:
        r = {"label": label, **run_config(model, problems, s, sink, window, args)}
        print(
            f"{label} S{sink}/W{window}: accuracy {r['accuracy']:.3f}, {r['mean_total_tokens']:.0f} tokens, "
            f"{r['wall_s']:.0f} s",
            flush=True,
        )
        results.append(r)
    print(render(results))
    out = {
        "model": str(model),
        "task": {
            "module": "rlkv_edge.reasoning",
            "seed": reasoning.EVAL_SEED,
            "n": args.n,
            "n_codes": reasoning.N_CODES,
            "hops": reasoning.HOPS,
            "n_words": reasoning.N_WORDS,
            "n_words_after": reasoning.N_WORDS_AFTER,
            "system": None,
            "max_tokens": args.max_tokens,
            "greedy": True,
        },
        "results": results,
        "total_wall_s": time.perf_counter() - t0,
        "threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "load_average": list(os.getloadavg()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

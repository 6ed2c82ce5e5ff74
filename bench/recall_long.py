"""Key recall past a 2048-token window at n_ctx 8208: the head split against all-local with the same KV
quantization (issue 13), on the bundled SmolLM2 with the shipped default heads.

    python bench/recall_long.py [--n 10] [--threads 2] [--out bench/results/recall_long.json]
    python bench/recall_long.py --random 3 --no-main --out bench/results/recall_long_random.json

At 8k tokens of running text, all-local with a 2048 window and q8_0/q4_0 matches rlkv s = 0.75 S64/W1024 with
the same types in KL for less memory (docs/RESULTS.md). This asks what the full heads buy: each problem states a
code, then ~3900 tokens of filler, then asks for it (rlkv_edge.tasks, size (64, 2048)), so no window of 2048
holds it. `--random N` adds the same rlkv point with random head scores (seeds 0..N-1), to tell what the
learned heads add. Every configuration runs in this process (rlkv_edge.frontier.measure, greedy, 16 answer tokens);
its KL column is over the first 256 tokens of GPL-3 only (inside every window) and is not a result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path("/usr/share/common-licenses/GPL-3")
N_CTX = 8208


def main(argv: list[str] | None = None) -> int:
    """Measure recall and KV memory for the configurations; print the table and write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="problems (held-out seed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--random", type=int, default=0, help="random-mask controls at the rlkv point")
    ap.add_argument("--no-main", action="store_true", help="only f16 full and the random controls")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recall_long.json")
    args = ap.parse_args(argv)

    from rlkv_edge import tasks as T
    from rlkv_edge.cli.frontier import mask_files
    from rlkv_edge.cli.options import default_model
    from rlkv_edge.evaluate import load_reward, load_tasks, text_tokens
    from rlkv_edge.frontier import FrontierConfig, measure, render, to_json

    model = default_model()
    path = model.path
    quant = {"type_k": "q8_0", "type_v": "q4_0"}
    configs = [
        FrontierConfig("f16 full", "full", path, sparsity=0.0),
        FrontierConfig("q8_0/q4_0 full", "kv-quant", path, sparsity=0.0, **quant),
        FrontierConfig("rlkv s=0.75 S64/W1024 + q8_0/q4_0", "rlkv+quant", path, 0.75, 64, 1024, **quant),
        FrontierConfig("all-local S64/W1024 + q8_0/q4_0", "all-local+quant", path, 1.0, 64, 1024, **quant),
        FrontierConfig("all-local S64/W2048 + q8_0/q4_0", "all-local+quant", path, 1.0, 64, 2048, **quant),
    ]
    if args.no_main:
        configs = configs[:1]
    with tempfile.TemporaryDirectory() as tmp:
        for label, _family, dst in mask_files(model, args.random, False, Path(tmp)):  # random head scores
            configs.append(
                FrontierConfig(f"{label} s=0.75 S64/W1024 + q8_0/q4_0", "random+quant", dst, 0.75, 64, 1024, **quant)
            )
        problems = T.write_jsonl(T.problems_for(args.n, T.EVAL_SEED, 64, 2048), Path(tmp) / "recall.jsonl")
        tasks = load_tasks(str(problems))
        tokens = text_tokens(model, TEXT, 256)
        opts = {"max_tokens": 16, "system": "", "reward": load_reward("rlkv_edge.tasks:recall_reward")}
        points = measure(
            configs, tokens, n_ctx=N_CTX, depth=None, n_threads=args.threads, tasks=tasks, task_options=opts,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    meta = {
        "model": path.name,
        "text": f"{TEXT} (256 tokens: the KL column is not a result)",
        "n_tokens": len(tokens),
        "n_ctx": N_CTX,
        "depth": None,
        "threads": args.threads,
        "heads": model.info.get("source") if model.converted else None,
        "tasks": f"key recall, {args.n} problems of rlkv_edge.tasks size (64, 2048), seed {T.EVAL_SEED}",
    }
    print(render(points, meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(points, meta), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A calibration text from a task family: the model's own full-cache chains of thought on training problems,
written as chat transcripts one after another — for `rlkv-edge train --objective ablation / distill --text`,
so head scores measure what the family's answers need rather than what a licence text needs (issue 26).

Problems come from the family's TRAIN_SEED (disjoint from the held-out EVAL_SEED problems the cross table
scores); answers are greedy with every head full, through the model's chat template, no system prompt (as
`bench/cross_table.py` asks). Only correct answers are kept.

    .venv/bin/python bench/task_text.py --model qwen2.5-coder-0.5b --family trace --n 6 --out trace6.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jinja2

from rlkv_edge.atomic import atomic_write_text
from rlkv_edge.catalog import find
from rlkv_edge.models import open_model, read_model


def main(argv: list[str] | None = None) -> int:
    """Generate the answers and write the transcript text."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="plain GGUF or catalog name")
    ap.add_argument("--family", choices=("trace", "chain"), default="trace")
    ap.add_argument("--n", type=int, default=6, help="correct answers to keep")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.family == "trace":
        from rlkv_edge import program_trace as fam
    else:
        from rlkv_edge import reasoning as fam  # type: ignore[no-redef]
    entry = find(args.model)
    src = Path(entry.gguf() or "") if entry else Path(args.model)
    llm = open_model(read_model(src), n_ctx=2048, n_threads=args.threads)
    template = jinja2.Environment().from_string(llm.metadata["tokenizer.chat_template"])
    max_tokens = getattr(fam, "MAX_TOKENS", 256)
    t0 = time.time()
    parts: list[str] = []
    tried = 0
    for p in fam.make_problems(4 * args.n, fam.TRAIN_SEED):
        if len(parts) == args.n:
            break
        tried += 1
        llm.reset()
        messages = [{"role": "user", "content": p["question"]}]
        r = llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens, seed=0)
        answer = r["choices"][0]["message"]["content"] or ""
        if fam.score_answer(answer, p["answer"]) < 1.0:
            continue
        # the transcript as the model's chat template lays it out (its special tokens are parsed back)
        parts.append(template.render(messages=[*messages, {"role": "assistant", "content": answer}]))
        print(f"[{time.time() - t0:5.0f}s] {len(parts)}/{args.n} kept of {tried}", file=sys.stderr, flush=True)
    llm.close()
    atomic_write_text(args.out, "".join(parts))
    print(f"wrote {args.out}: {len(parts)} transcripts of {tried} problems", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why decode at depth leaves the traffic model on a CPU, and the grouped decode path that brings it back.

The traffic model (rlkv_edge/traffic.py) counts each K/V row once per decoded token. ggml's CPU flash attention
decodes one query head at a time (the KV cells split over the threads), so a KV head's rows are read once per
query head that shares it: 4 times on DeepSeek-R1-Distill-Llama-8B's 32 query / 8 KV heads. The reads after the
first are cheap while one KV head's cells stay in the last-level cache and go to memory once they do not, so the
cost of one (query head, cell) pair jumps at the depth where that stops; where that is depends on how much of the
shared L3 the machine's other tenants leave. rlkv's grouped decode path (native/rlkv/rlkv-decode.h) reads each
row once for all the query heads that share it.

Files of the r1-8b shape of bench/scale.py (random Q4_0 weights, depth by `--fill mark`), in one process:

    r1-8b f16      32 query / 8 KV heads, stock f16 cache (llama.cpp's own graph)
    MHA f16        the control: 32 KV heads, so the same (query head, cell) pairs and arithmetic, 4x the distinct
                   K/V bytes, each read once
    s=0.5 ggml-FA  r1-8b converted, half the KV heads full (S64/W256), ggml's flash attention (RLKV_DECODE_ATTN=0)
    s=0.5 grouped  the same on the grouped decode path
    s=1/32 grouped 31 of the 32 KV heads full on the grouped path: nearly f16's cache, so s=0.5 against it is what
                   the head split alone buys at equal kernel

With `--one-kernel` the two stock rows (r1-8b f16, MHA f16) decode on the grouped path too
(RLKV_DECODE_ATTN=force), so every row but "s=0.5 ggml-FA" runs on one kernel; each column names the kernel that
decoded it (counted from the runtime, not assumed).

Tables: ms per token with the marginal cost of a (query head, cell) pair between depths; then speed-ups with the
traffic model's prediction beside them. With `--neighbour-mib N` everything runs twice, pinned to the first
`--threads` CPUs: once with the last CPU idle, once beside a process that reads an N MiB buffer over and over
(it holds L3 and uses little memory bandwidth).

    .venv/bin/python bench/gqa_decode.py [--threads 2] [--depths 1024,...,32256] [--neighbour-mib 24] [--one-kernel]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kv_runtime import placeholder_scores
from scale import SHAPES, Shape, write_random_gguf

import rlkv_edge
from rlkv_edge.atomic import atomic_write_text
from rlkv_edge.bench import BenchConfig, BenchResult, predicted_tg_ratio, run_bench
from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores
from rlkv_edge.runtime import grouped_decode

DEPTHS = (1024, 2048, 4096, 8192, 12288, 16384, 24576, 32256)
N_TG = 32
GQA = SHAPES["r1-8b"]
MHA = Shape("r1-8b-mha", GQA.n_layer, GQA.n_embd, GQA.n_head, GQA.n_head, GQA.n_ff, GQA.n_vocab, tied_output=False)
_NEIGHBOUR = "import sys, numpy as np\na = np.ones(int(sys.argv[1]) * 2**18, dtype=np.float32)\nwhile True:\n a.sum()\n"


def pair_ns(r: BenchResult, shape: Shape, d0: int, d1: int) -> float:
    """Marginal ns per (query head, cell) pair from depth d0 to d1 (every head full)."""
    dt = 1 / r.tg[d1] - 1 / r.tg[d0]
    return 1e9 * dt / ((d1 - d0) * shape.n_layer * shape.n_head)


def measure(configs: list[BenchConfig], depths: list[int], threads: int, reps: int) -> list[BenchResult]:
    """tg32 at every depth for every config, round-robin, in this process."""

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    n_ctx = max(depths) + 512
    return run_bench(configs, n_ctx=n_ctx, depths=depths, n_pp=0, n_tg=N_TG, reps=reps, n_threads=threads,
                     fill="mark", log=log)  # fmt: skip


def table(results: list[BenchResult], depths: list[int]) -> tuple[str, list[dict]]:
    """Markdown tables and JSON rows: ms/token and ns per pair; speed-ups, each with the traffic prediction."""
    f16, mha, fa, grouped, near = results
    ms_rows = [
        "| depth | "
        + " | ".join(f"{r.label} ({r.decode_kernel}) ms/tok" for r in results)
        + " | ns/pair f16 | ns/pair MHA |",
        "|---:" * (len(results) + 3) + "|",
    ]
    x_rows = [
        "| depth | s=0.5 ggml-FA × f16 | s=0.5 grouped × f16 | predicted | s=0.5 ÷ s=1/32, both grouped | predicted |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    out = []
    for i, d in enumerate(depths):
        ns = [pair_ns(r, s, depths[i - 1], d) if i else None for r, s in ((f16, GQA), (mha, MHA))]
        ms = [1e3 / r.tg[d] for r in results]
        cells = [f"{x:.1f}" for x in ms] + [f"{x:.1f}" if x is not None else "–" for x in ns]
        ms_rows.append(f"| {d} | " + " | ".join(cells) + " |")
        pred_f16 = predicted_tg_ratio(grouped, f16, d, N_TG) or float("nan")
        pred_near = predicted_tg_ratio(grouped, near, d, N_TG) or float("nan")
        xs = [fa.tg[d] / f16.tg[d], grouped.tg[d] / f16.tg[d], grouped.tg[d] / near.tg[d]]
        x_rows.append(f"| {d} | {xs[0]:.2f} | {xs[1]:.2f} | {pred_f16:.2f} | {xs[2]:.2f} | {pred_near:.2f} |")
        out.append({"depth": d, "ms_per_token": dict(zip([r.label for r in results], ms, strict=True)),
                    "pair_ns_f16": ns[0], "pair_ns_mha": ns[1],
                    "fa_over_f16": xs[0], "grouped_over_f16": xs[1], "predicted_over_f16": pred_f16,
                    "grouped_over_near_f16": xs[2], "predicted_over_near_f16": pred_near})  # fmt: skip
    return "\n".join(ms_rows) + "\n\n" + "\n".join(x_rows), out


def main() -> None:
    """Measure the three files (alone, and beside a cache-holding neighbour if asked); write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--neighbour-mib", type=int, default=0, help="also measure beside an N MiB cache-holding loop")
    ap.add_argument(
        "--one-kernel", action="store_true", help="stock rows on the grouped path too (RLKV_DECODE_ATTN=force)"
    )
    ap.add_argument("--out", type=Path, default=Path("bench/results/gqa_decode.json"))
    args = ap.parse_args()
    depths = sorted(int(d) for d in args.depths.split(","))
    cpus = sorted(os.sched_getaffinity(0))
    if args.neighbour_mib and args.threads >= len(cpus):
        raise SystemExit(f"--neighbour-mib needs a CPU to spare: --threads {args.threads} of {len(cpus)} CPUs")
    record: dict = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "reps": args.reps,
        "n_tg": N_TG,
        "rlkv_edge": rlkv_edge.__version__,
        "grouped_decode": grouped_decode(),  # False: "rlkv grouped" ran ggml's flash attention too
        "one_kernel": args.one_kernel,
        "runs": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {s.name: Path(tmp) / f"{s.name}.gguf" for s in (GQA, MHA)}
        for s in (GQA, MHA):
            write_random_gguf(s, paths[s.name])
        dst = Path(tmp) / "r1-8b.rlkv.gguf"
        heads = HeadScores(placeholder_scores(GQA.n_layer, GQA.n_head_kv), 64, 256, method="placeholder")
        convert_gguf(paths[GQA.name], heads, dst, progress=False)
        off, on = {"RLKV_DECODE_ATTN": "0"}, {"RLKV_DECODE_ATTN": "1"}
        stock = {"RLKV_DECODE_ATTN": "force"} if args.one_kernel else None
        configs = [
            BenchConfig("r1-8b f16", paths[GQA.name], None, type_k="f16", type_v="f16", env=stock),
            BenchConfig("MHA f16", paths[MHA.name], None, type_k="f16", type_v="f16", env=stock),
            BenchConfig("s=0.5 ggml-FA", dst, 0.5, type_k="f16", type_v="f16", env=off),
            BenchConfig("s=0.5 grouped", dst, 0.5, type_k="f16", type_v="f16", env=on),
            BenchConfig("s=1/32 grouped", dst, 1 / 32, type_k="f16", type_v="f16", env=on),
        ]
        runs = ["alone"] + (["neighbour"] if args.neighbour_mib else [])
        if args.neighbour_mib:
            os.sched_setaffinity(0, cpus[: args.threads])
        for run in runs:
            neighbour = None
            if run == "neighbour":
                cmd = ["taskset", "-c", str(cpus[-1]), sys.executable, "-c", _NEIGHBOUR, str(args.neighbour_mib)]
                neighbour = subprocess.Popen(cmd)
                time.sleep(1)
            try:
                results = measure(configs, depths, args.threads, args.reps)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
            md, rows = table(results, depths)
            title = "alone" if run == "alone" else f"beside a {args.neighbour_mib} MiB cache-holding loop"
            print(f"\n## {title}: {args.threads} thread(s), tg{N_TG}, {args.reps} round-robin reps\n\n{md}")
            record["runs"][run] = {"rows": rows, "tg_std": {r.label: r.tg_std for r in results},
                                   "decode_kernel": {r.label: r.decode_kernel for r in results}}  # fmt: skip
    record["neighbour_mib"] = args.neighbour_mib
    record["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

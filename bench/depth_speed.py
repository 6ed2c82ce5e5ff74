"""Decode and prefill speed at depth on a real model, every row on the same kernel (issue 27).

Two kernels, each run for every row:

    grouped  rlkv's grouped decode path (native/rlkv/rlkv-decode.cpp); the unconverted file takes it too
             (RLKV_DECODE_ATTN=force)
    ggml     llama.cpp's own flash attention for every row (RLKV_DECODE_ATTN=0)

Rows: the unconverted file (stock f16 cache) and the converted file at each --sparsity (f16 caches), so at one
kernel the ratio rlkv / stock is what the head split alone buys; at one file, grouped / ggml is what the kernel
buys. Each factor is printed beside the decode traffic model's prediction (rlkv_edge/traffic.py; the kernel's
prediction is 1: both read the same bytes). Depth is reached by marking cells without computing them (`--fill
mark`: attention's cost does not depend on the values). Repetitions go round-robin over the rows.

    .venv/bin/python bench/depth_speed.py --model qwen2.5-coder-0.5b \
        --heads rlkv_edge/data/qwen2.5-coder-0.5b_heads.json --out bench/results/qwen_depth_speed.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from record import save_record

from rlkv_edge.bench import BenchConfig, BenchResult, predicted_tg_ratio, run_bench
from rlkv_edge.catalog import find
from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores, load_heads

KERNELS = {
    "grouped": ({"RLKV_DECODE_ATTN": "force"}, {"RLKV_DECODE_ATTN": "1"}),
    "ggml": ({"RLKV_DECODE_ATTN": "0"},) * 2,
}


def configs(plain: Path, conv: Path, sparsities: list[float]) -> list[BenchConfig]:
    """Every row on each kernel: stock first, then the converted file at each s."""
    out = []
    for kernel, (stock_env, rlkv_env) in KERNELS.items():
        out.append(BenchConfig(f"stock f16 [{kernel}]", plain, None, type_k="f16", type_v="f16", env=stock_env))
        for s in sparsities:
            out.append(BenchConfig(f"rlkv s={s:g} f16 [{kernel}]", conv, s, type_k="f16", type_v="f16", env=rlkv_env))
    return out


def factors(results: list[BenchResult], depths: list[int], n_tg: int) -> list[dict[str, Any]]:
    """Per depth and row: tg and pp against the stock row on the same kernel (head split), and against the same
    row on ggml's kernel (kernel), with the traffic model's prediction for the head split."""
    by = {r.label: r for r in results}
    rows = []
    for d in depths:
        for r in results:
            kernel = r.label.rsplit("[", 1)[1].rstrip("]")
            stock = by[f"stock f16 [{kernel}]"]
            ggml = by[r.label.replace(f"[{kernel}]", "[ggml]")]
            rows.append({
                "depth": d, "row": r.label, "decode_kernel": r.decode_kernel, "kv_mib": round(r.kv_mib, 2),
                "tg": r.tg[d], "tg_std": r.tg_std.get(d), "pp": r.pp[d],
                "split_tg": r.tg[d] / stock.tg[d], "split_pp": r.pp[d] / stock.pp[d],
                "split_predicted": predicted_tg_ratio(r, stock, d, n_tg),
                "kernel_tg": r.tg[d] / ggml.tg[d], "kernel_pp": r.pp[d] / ggml.pp[d],
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure, print and save."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="plain GGUF or catalog name")
    ap.add_argument("--heads", type=Path, required=True, help="the head scores to convert with")
    ap.add_argument("--sparsity", type=float, action="append", default=None, help="repeatable (default .5 .75)")
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--depths", default="8192,16384,32000")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sparsities = args.sparsity or [0.5, 0.75]
    depths = sorted(int(d) for d in args.depths.split(","))
    n_tg, n_pp = 128, 512
    n_ctx = -(-(max(depths) + n_pp) // 256) * 256
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    entry = find(args.model)
    plain = Path(entry.gguf() or "") if entry else Path(args.model)
    heads = load_heads(args.heads)
    with tempfile.TemporaryDirectory(prefix="rlkv-depth-") as tmp:
        conv = Path(tmp) / "heads.rlkv.gguf"
        convert_gguf(plain, HeadScores(heads.scores, args.sink, args.window, "depth", heads.model, {}), conv)
        results = run_bench(
            configs(plain, conv, sparsities), n_ctx=n_ctx, depths=depths, n_pp=n_pp, n_tg=n_tg, reps=args.reps,
            n_threads=args.threads, fill="mark", log=log,
        )  # fmt: skip
    rows = factors(results, depths, n_tg)
    print(f"\n{plain.name}, heads {args.heads} (S{args.sink}/W{args.window}), {args.threads} threads, "
          f"{args.reps} reps round-robin, depth by marking cells\n")  # fmt: skip
    print("| depth | row | kernel | KV MiB | tg128 t/s | pp512 t/s | split tg (pred.) | split pp | kernel tg |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pred = f"{r['split_predicted']:.2f}" if r["split_predicted"] else "–"
        cells = [r["depth"], r["row"], r["decode_kernel"], f"{r['kv_mib']:.1f}", f"{r['tg']:.1f}", f"{r['pp']:.1f}"]
        cells += [f"{r['split_tg']:.2f} ({pred})", f"{r['split_pp']:.2f}", f"{r['kernel_tg']:.2f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    record = {
        "model": plain.name, "heads": str(args.heads), "sink": args.sink, "window": args.window,
        "sparsities": sparsities, "depths": depths, "n_ctx": n_ctx, "threads": args.threads, "reps": args.reps,
        "fill": "mark", "elapsed_s": round(time.time() - t0), "rows": rows,
    }  # fmt: skip
    save_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""KV memory and speed of the per-head runtime on SmolLM2-135M-Instruct (Q4_1), in one process.

The bundled GGUF without rlkv metadata is the baseline; the same file converted with rlkv metadata is
measured at s ∈ {0, 0.25, 0.5, 0.75}: KV MiB, pp512 and tg128 at depths 0, 2048 and 6144, n_ctx 8192.

The head scores used here are PLACEHOLDERS (rank of the head index inside its layer, so the full heads
are spread as evenly over the layers as the mask rule allows), not trained ones: memory and speed depend
only on how many heads of each layer are full, not on which. Quality numbers need trained scores
(`rlkv-edge eval`).

    .venv/bin/python bench/kv_runtime.py [--out bench/results/kv_runtime.json] [--reps 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rlkv_edge
from rlkv_edge.bench import BenchConfig, markdown_table, results_json, run_bench
from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores
from rlkv_edge.models import bundled_model_path

SPARSITIES = (0.0, 0.25, 0.5, 0.75)
DEPTHS = (0, 2048, 6144)
N_CTX = 8192
NOTE = (
    "placeholder head scores (head-index rank, spread evenly over layers), not trained: "
    "memory and speed depend only on how many heads per layer are full"
)


def placeholder_scores(n_layer: int, n_head_kv: int) -> np.ndarray:
    """Score 1 - h/H - l·ε: the mask rule then fills head 0 of every layer first, then head 1, ..."""
    h = np.arange(n_head_kv, dtype=np.float64)[None, :] / n_head_kv
    layer = np.arange(n_layer, dtype=np.float64)[:, None] * 1e-4
    return (1.0 - h - layer).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results/kv_runtime.json"))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    ap.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]

    src = bundled_model_path()
    from rlkv_edge.convert import read_rlkv_info

    info = read_rlkv_info(src)
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "smollm2-placeholder.rlkv.gguf"
        heads = HeadScores(
            placeholder_scores(info["n_layer"], info["n_head_kv"]),
            sink_size=64,
            window_size=256,
            method="placeholder (bench/kv_runtime.py)",
        )
        convert_gguf(src, heads, dst, progress=False)
        configs = [BenchConfig("no metadata", src, None)]
        configs += [BenchConfig(f"rlkv s={s:g}", dst, s) for s in SPARSITIES]
        print(f"# {NOTE}", file=sys.stderr)
        t0 = time.perf_counter()
        results = run_bench(
            configs,
            n_ctx=N_CTX,
            depths=depths,
            reps=args.reps,
            n_threads=args.threads,
            n_gpu_layers=args.n_gpu_layers,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    table = markdown_table(results)
    print(f"SmolLM2-135M-Instruct Q4_1, n_ctx {N_CTX}, S=64 W=256, {args.threads} threads; {NOTE}\n")
    print(table)
    out = results_json(
        results,
        model=src.name,
        n_ctx=N_CTX,
        depths=depths,
        threads=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        note=NOTE,
        machine=platform.platform(),
        rlkv_edge=rlkv_edge.__version__,
        seconds=round(time.perf_counter() - t0, 1),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

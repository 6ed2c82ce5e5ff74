"""Below which context length the constant ring costs rlkv + quantization its memory lead over q4_0 K+V.

The local heads' ring holds pad256(S + W + n_ubatch) cells whatever the context, so at short contexts an rlkv
cache can need more memory than a quantized full cache. By the KV formula of docs/DESIGN.md §7 (the runtime's
allocation agrees within 1%, tests/native), for SmolLM2 with the default heads: the KV memory of each rlkv +
quantization configuration over q4_0 K+V's at n_ctx from 1k to 64k, the smallest n_ctx from which it
needs no more memory than q4_0, and the smallest from which it needs at most 0.2× f16's (found by bisection).
Quality at these points: docs/RESULTS.md (8k table).

    .venv/bin/python bench/ring_crossover.py [--ubatch 512] [--out bench/results/ring_crossover.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from rlkv_edge.atomic import atomic_write_text
from rlkv_edge.cli.options import default_model
from rlkv_edge.memory import kv_memory

CONFIGS = [  # (label, sparsity, sink, window, cache type)
    ("rlkv s=0.5 S64/W256 + q8_0", 0.5, 64, 256, "q8_0"),
    ("rlkv s=0.5 S64/W1024 + q8_0", 0.5, 64, 1024, "q8_0"),
    ("rlkv s=0.75 S64/W256 + q8_0", 0.75, 64, 256, "q8_0"),
    ("rlkv s=0.75 S64/W1024 + q8_0", 0.75, 64, 1024, "q8_0"),
    ("rlkv s=0.75 S64/W1024 + q4_0", 0.75, 64, 1024, "q4_0"),
    ("rlkv s=0.75 S64/W1024 + q8_0/q4_0", 0.75, 64, 1024, "q8_0/q4_0"),
    ("all-local S64/W1024 (f16)", 1.0, 64, 1024, "f16"),
]
N_CTX = [1024, 2048, 4096, 8192, 16384, 32768, 65536]


def main() -> None:
    """Print the table and the crossovers; write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--out", type=Path, default=Path("bench/results/ring_crossover.json"))
    args = ap.parse_args()
    info = default_model(quiet=True).info

    def kv(cfg: tuple[str, float, int, int, str], n_ctx: int) -> float:
        _, s, sink, window, t = cfg
        k, _, v = t.partition("/")
        return float(kv_memory(info, s, n_ctx, k, v or k, args.ubatch, sink=sink, window=window)["kv_bytes_compressed"])

    def full(t: str, n_ctx: int) -> float:
        """KV bytes of the uncompressed cache with K and V in type t."""
        return float(kv_memory(info, 0.0, n_ctx, t, t, args.ubatch)["kv_bytes_compressed"])

    def ratio(cfg: tuple[str, float, int, int, str], n_ctx: int) -> float:
        """KV bytes over q4_0 K+V's."""
        return kv(cfg, n_ctx) / full("q4_0", n_ctx)

    def ratio_f16(cfg: tuple[str, float, int, int, str], n_ctx: int) -> float:
        """KV bytes over f16's, divided by 0.2 (issue 13's "below q4_0's memory" line)."""
        return kv(cfg, n_ctx) / full("f16", n_ctx) / 0.2

    def crossover(cfg: tuple[str, float, int, int, str], over: Callable[..., float] = ratio) -> int | None:
        lo, hi = 1, 1 << 20
        if over(cfg, hi) > 1:
            return None
        while lo < hi:  # the ratio falls with n_ctx: the smallest n_ctx where it is <= 1
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if over(cfg, mid) > 1 else (lo, mid)
        return lo

    print(f"KV memory / q4_0 K+V's, SmolLM2 default heads, n_ubatch {args.ubatch}\n")
    print("| config | " + " | ".join(f"{n // 1024}k" for n in N_CTX) + " | ≤ q4_0 from n_ctx | ≤ 0.2× f16 from |")
    print("|---|" + "---:|" * (len(N_CTX) + 2))
    rows = []
    for cfg in CONFIGS:
        r = [ratio(cfg, n) for n in N_CTX]
        x, x20 = crossover(cfg), crossover(cfg, ratio_f16)
        ratios = dict(zip(map(str, N_CTX), r, strict=True))
        rows.append({"config": cfg[0], "ratio_to_q4_0": ratios, "crossover": x, "crossover_0.2x_f16": x20})
        print(f"| {cfg[0]} | " + " | ".join(f"{v:.2f}" for v in r) + f" | {x or 'never'} | {x20 or 'never'} |")
    atomic_write_text(args.out, json.dumps({"n_ubatch": args.ubatch, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

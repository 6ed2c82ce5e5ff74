"""The grouped decode kernel of two library builds, side by side: tg at depth on the same file, the same tokens and
the same thread count, one build after the other in fresh processes (a process loads one native library), rounds
alternating A B A B … so that drift on a shared machine falls on both. For a change to native/rlkv/rlkv-decode.cpp
that should not change its speed: keep a copy of the installed library before rebuilding, then

    cp -r .venv/lib/python3.11/site-packages/rlkv_edge/lib /tmp/lib_before   # before the change
    .venv/bin/python bench/kernel_ab.py --before /tmp/lib_before --out bench/results/kernel_ab.json

`--after` defaults to the installed library. The file is the Qwen2.5-Coder-0.5B GGUF converted with its shipped
heads (s = 0.5, F16 cache: the grouped kernel's cache type), depth reached by marking cells (bench `fill="mark"`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import save_record

_CHILD = """
import json, sys
from pathlib import Path
from rlkv_edge.bench import BenchConfig, run_bench
from rlkv_edge.runtime import grouped_decode
path, depths = Path(sys.argv[1]), [int(d) for d in sys.argv[2].split(",")]
n_tg, threads = int(sys.argv[3]), int(sys.argv[4])
assert grouped_decode(), "the grouped decode path is off in this build"
(r,) = run_bench([BenchConfig("rlkv", path, 0.5)], n_ctx=max(depths) + n_tg + 64, depths=depths, n_pp=0, n_tg=n_tg,
                 n_threads=threads, fill="mark")
assert r.decode_kernel == "grouped", r.decode_kernel
print(json.dumps({str(d): r.tg[d] for d in depths}))
"""


def run_child(lib: Path, path: Path, depths: list[int], n_tg: int, threads: int) -> dict[int, float]:
    """tg (tokens/s) at each depth with the native library in `lib`, in a fresh process."""
    env = {**os.environ, "RLKV_LIB_DIR": str(lib), "OMP_NUM_THREADS": str(threads)}
    args = [sys.executable, "-c", _CHILD, str(path), ",".join(map(str, depths)), str(n_tg), str(threads)]
    out = subprocess.run(args, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the run with {lib} failed:\n{out.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    """Alternate the two builds, print median tg per depth and the after/before ratio, write the JSON."""
    from rlkv_edge._native import LIB_DIR
    from rlkv_edge.catalog import find
    from rlkv_edge.convert import convert_gguf
    from rlkv_edge.heads import load_heads

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="lib directory of the build before the change")
    ap.add_argument("--after", type=Path, default=LIB_DIR, help="lib directory after (default: the installed one)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--heads", type=Path, default=Path("rlkv_edge/data/qwen2.5-coder-0.5b_heads.json"))
    ap.add_argument("--depths", default="8192,16384")
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/kernel_ab.json"))
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    entry = find(args.model)
    src = Path(entry.gguf() or "") if entry else Path(args.model)
    runs: dict[str, list[dict[int, float]]] = {"before": [], "after": []}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="rlkv-ab-") as tmp:
        conv = Path(tmp) / "model.rlkv.gguf"
        convert_gguf(src, load_heads(args.heads), conv)
        for i in range(args.rounds):
            for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                lib = args.before if name == "before" else args.after
                runs[name].append(run_child(lib, conv, depths, args.n_gen, args.threads))
                print(f"[{time.time() - t0:5.0f}s] round {i + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    rows = []
    print("| depth | before tg/s | after tg/s | after ÷ before |\n|---:|---:|---:|---:|")
    for d in depths:
        b = statistics.median(r[d] for r in runs["before"])
        a = statistics.median(r[d] for r in runs["after"])
        rows.append({"depth": d, "before_tg": b, "after_tg": a, "ratio": a / b})
        print(f"| {d} | {b:.2f} | {a:.2f} | {a / b:.3f} |")
    record = {
        "model": src.name, "heads": str(args.heads), "sparsity": 0.5, "cache": "f16/f16", "kernel": "grouped",
        "n_gen": args.n_gen, "rounds": args.rounds, "threads": args.threads, "rows": rows,
        "runs": runs,
    }  # fmt: skip
    save_record(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

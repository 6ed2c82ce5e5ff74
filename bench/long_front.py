"""The long-context front on a 32k model (issue 27): KV memory vs KL at 8k / 16k / 32k tokens of real text, rlkv
composed with llama.cpp's cache types against every cache-type pair with every head full, all-local at equal
memory with the same types (its window widened until its ring holds as many cells as the rlkv point's caches), and
random masks — one process per context, one decode kernel for every row (the product's default on the CPU).

Text: the Debian licence texts except Apache-2.0 (the ablation / distillation calibration text), joined in a
fixed order; no heads file was fitted on them. KL(f16 full ‖ config) over the last --score-last positions of an
N-token prefix (the positions that read furthest back; `rlkv_edge.evaluate.tail_logprobs`).

    .venv/bin/python bench/long_front.py --heads rlkv_edge/data/qwen2.5-coder-0.5b_heads.json \
        --tokens 16384 --out bench/results/qwen_front_16k.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from record import save_record

from rlkv_edge.atomic import atomic_path
from rlkv_edge.catalog import find
from rlkv_edge.convert import convert_gguf
from rlkv_edge.frontier import FrontierConfig, FrontierPoint, from_json, mark_front, measure, to_json
from rlkv_edge.heads import HeadScores, load_heads
from rlkv_edge.memory import kv_memory
from rlkv_edge.models import open_model, read_model

LICENCES = ("GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3", "MPL-2.0", "MPL-1.1", "LGPL-3", "Artistic", "CC0-1.0")
PAIRS = ("f16/f16", "q8_0/q8_0", "q8_0/q5_1", "q8_0/q4_0", "q5_1/q5_1", "q5_0/q5_0", "q4_1/q4_1", "q4_0/q4_0")
PAIRS += ("iq4_nl/iq4_nl", "q5_1/q8_0", "q4_0/q8_0")
RLKV_TYPES = ("q8_0/q8_0", "q8_0/q4_0")


def long_text() -> str:
    """The held-out licence texts joined (~35k Qwen tokens)."""
    return "\n\n".join(Path("/usr/share/common-licenses", n).read_text(encoding="utf-8") for n in LICENCES)


def equal_memory_window(info: dict[str, Any], target: int, n_ctx: int, tk: str, tv: str, sink: int) -> int:
    """The widest all-local window (steps of 256) whose KV bytes at n_ctx stay <= target."""
    best = 256
    for w in range(256, n_ctx, 256):
        if kv_memory(info, 1.0, n_ctx, tk, tv, sink=sink, window=w)["kv_bytes_compressed"] > target:
            break
        best = w
    return best


class PointCache:
    """--cache DIR: ref.npy (the f16 reference log-probs over the scored positions) and points.jsonl (one
    measured point per line), written as points are measured."""

    def __init__(self, root: Path, reference_label: str) -> None:
        self.root, self.reference_label = root, reference_label
        root.mkdir(parents=True, exist_ok=True)

    def reference(self) -> np.ndarray | None:
        """The saved reference log-probs, if any."""
        path = self.root / "ref.npy"
        return np.load(path) if path.is_file() else None

    def points(self) -> dict[str, FrontierPoint]:
        """Every saved point by label (the last saved wins)."""
        path = self.root / "points.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        pts = from_json({"points": [json.loads(line) for line in lines if line.strip()]})
        return {p.config.label: p for p in pts}

    def add(self, point: FrontierPoint, reference: np.ndarray | None) -> None:
        """Save one point (and the reference log-probs when this point made them)."""
        if reference is not None:
            with atomic_path(self.root / "ref.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, reference)
        with open(self.root / "points.jsonl", "a") as f:
            f.write(json.dumps(to_json([point], {})["points"][0]) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Measure, print and save the front at one context length."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="plain GGUF or catalog name")
    ap.add_argument("--heads", type=Path, required=True, help="the head scores to convert with")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--score-last", type=int, default=1024)
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--windows", default="1024", help="rlkv windows, comma-separated")
    ap.add_argument("--sparsity", type=float, action="append", default=None, help="repeatable (default .5 .75)")
    ap.add_argument("--pairs", default=",".join(PAIRS), help="cache-type pairs K/V with every head full")
    ap.add_argument("--rlkv-types", default=",".join(RLKV_TYPES), help="pairs rlkv and all-local are composed with")
    ap.add_argument("--n-random", type=int, default=3, help="random masks (at the first s, W and rlkv type)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", default=None, metavar="TEXT",
                    help="measure only the configurations whose label contains TEXT (repeatable; the others come "
                    "from --cache or are left out)")  # fmt: skip
    ap.add_argument("--cache", type=Path, default=None, metavar="DIR",
                    help="keep the f16 reference log-probs and each measured point here, so a run resumes and "
                    "several processes (one per core) can share the work")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sparsities = args.sparsity or [0.5, 0.75]
    windows = [int(w) for w in args.windows.split(",")]
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    entry = find(args.model)
    src = Path(entry.gguf() or "") if entry else Path(args.model)
    plain = read_model(src)
    heads = load_heads(args.heads)
    with tempfile.TemporaryDirectory(prefix="rlkv-front-") as tmp:
        conv = Path(tmp) / "heads.rlkv.gguf"
        convert_gguf(src, HeadScores(heads.scores, args.sink, windows[0], "front", heads.model, {}), conv)
        info = read_model(conv).info
        probe = open_model(plain, n_ctx=512, n_threads=1)
        tokens = probe.tokenize(long_text().encode("utf-8"), add_bos=False)[: args.tokens]
        probe.close()
        if len(tokens) < args.tokens:
            raise SystemExit(f"the text has only {len(tokens)} tokens")
        configs = []
        for pair in args.pairs.split(","):
            tk, tv = pair.split("/")
            configs.append(
                FrontierConfig(
                    f"{pair} full", "full" if pair == "f16/f16" else "kv-quant", src, None, None, None, tk, tv
                )
            )
        for pair in args.rlkv_types.split(","):
            tk, tv = pair.split("/")
            for s in sparsities:
                for w in windows:
                    cfg = FrontierConfig(
                        f"rlkv s={s:g} S{args.sink}/W{w} {pair}", "rlkv+quant", conv, s, args.sink, w, tk, tv
                    )
                    configs.append(cfg)
                    target = kv_memory(info, s, args.tokens, tk, tv, sink=args.sink, window=w)["kv_bytes_compressed"]
                    wl = equal_memory_window(info, target, args.tokens, tk, tv, args.sink)
                    label = f"all-local S{args.sink}/W{wl} {pair} (= memory of s={s:g} W{w})"
                    configs.append(FrontierConfig(label, "all-local", conv, 1.0, args.sink, wl, tk, tv))
        tk, tv = args.rlkv_types.split(",")[0].split("/")
        for seed in range(args.n_random):
            dst = Path(tmp) / f"random-{seed}.rlkv.gguf"
            scores = np.random.default_rng(seed).random(heads.scores.shape).astype(np.float32)
            convert_gguf(src, HeadScores(scores, args.sink, windows[0], f"random {seed}", heads.model, {}), dst)
            label = f"random-{seed} s={sparsities[0]:g} S{args.sink}/W{windows[0]} {tk}/{tv}"
            configs.append(FrontierConfig(label, "random", dst, sparsities[0], args.sink, windows[0], tk, tv))
        cache = PointCache(args.cache, configs[0].label) if args.cache else None
        done = cache.points() if cache else {}
        todo = [c for c in configs if c.label not in done and (not args.only or any(t in c.label for t in args.only))]
        log(f"{len(todo)} of {len(configs)} configurations to measure, {len(tokens)} tokens, KL over the last "
            f"{args.score_last}")  # fmt: skip
        reference = cache.reference() if cache else None
        if reference is None and todo and todo[0] is not configs[0]:
            todo.insert(0, configs[0])  # the f16 reference comes first
        measure(
            todo, tokens, n_ctx=args.tokens, depth=None, n_threads=args.threads, log=log,
            score_last=args.score_last, reference=reference, on_point=cache.add if cache else None,
        )  # fmt: skip
        done = cache.points() if cache else {}
        points = [done[c.label] for c in configs if c.label in done]
        mark_front(points)
    f16 = points[0].kv_bytes
    print("| config | KV MiB | × f16 | KL | top-1 | front |\n|---|---:|---:|---:|---:|:-:|")
    for p in points:
        front = "●" if p.on_front else ""
        print(
            f"| {p.config.label} | {p.kv_mib:.1f} | {p.kv_bytes / f16:.3f} | {p.mean_kl:.4f} | {p.top1:.3f} | {front} |"
        )
    meta = {
        "model": src.name, "heads": str(args.heads), "n_tokens": args.tokens, "n_ctx": args.tokens,
        "score_last": args.score_last, "text": "Debian licences " + "+".join(LICENCES),
        "decode_kernel": "product default (prefill batches: ggml flash attention)", "threads": args.threads,
        "elapsed_s": round(time.time() - t0),
    }  # fmt: skip
    out = to_json(points, meta)
    for d in out["points"]:
        d["config"]["path"] = Path(d["config"]["path"]).name  # no machine layout in results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_record(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The end-to-end table for SmolLM2-135M-Instruct: learned head scores against masks that ignore the task.

For every sparsity s and every mask (the learned scores, random scores with 3 seeds, per-layer-uniform
masks, and all-local), through the llama.cpp runtime (patched, per-head KV):

* task accuracy on held-out key-recall problems (rlkv_edge.tasks, seed EVAL_SEED, sized for the heads'
  S and W by tasks.problems_for: the code to recall sits past the sinks and beyond the window);
* mean KL(full ‖ compressed) and top-1 agreement of the next-token distributions over a long synthetic
  text (rlkv_edge.tasks.long_text, ≥ 4k tokens, generated offline);
* KV MiB at n_ctx 8192 and the tg128 speed-up at depth 6144 (rlkv_edge.bench, same process).

Every mask is a heads table converted into its own GGUF (rlkv-edge convert), with the learned file's S and
W. Random masks: uniform random scores (seeds 0, 1, 2). Per-layer-uniform: every layer keeps
round-robin the same number of full heads (±1 where the count does not divide), which heads inside a
layer and which layers get the extra one drawn at random (seed 0). All-local: s = 1.

    .venv/bin/python bench/showcase.py                       # the full table (docs/RESULTS.md), ~30-40 min on 2 cores
    .venv/bin/python bench/showcase.py --quick --heads H.json  # the demo's short version (a few minutes)

Seeded: greedy decoding, fixed problem / text / mask seeds; the numbers reproduce up to llama.cpp's
floating-point summation order (thread count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlkv_edge import tasks as T
from rlkv_edge.bench import BenchConfig, run_bench
from rlkv_edge.convert import convert_gguf
from rlkv_edge.evaluate import Task, compare_logprobs, run_tasks, text_logprobs
from rlkv_edge.heads import HeadScores, load_heads
from rlkv_edge.masks import full_heads_per_layer
from rlkv_edge.models import bundled_model_path, default_heads_path, open_model

SPARSITIES = (0.25, 0.5, 0.75)
RANDOM_SEEDS = (0, 1, 2)
KV_CTX = 8192
BENCH_DEPTH = 6144


@dataclass
class Row:
    """One configuration's measurements."""

    mask: str
    sparsity: float
    n_full_heads: int = 0
    accuracy: float | None = None
    n_correct: int = 0
    mean_kl: float | None = None
    top1: float | None = None
    kv_mib: float | None = None
    tg_speedup: float | None = None


def random_scores(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Uniform random scores: a mask that ignores the model."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def uniform_scores(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Scores whose masks keep the same number of full heads in every layer (±1) at every sparsity.

    Head of in-layer rank r in layer l scores 1 − (r + u_l)/H with u_l ∈ [0, 1) a random per-layer offset
    and the in-layer ranks a random permutation: the mask rule takes all rank-0 heads first, then rank-1
    heads (layers with the smallest u_l first), and so on.
    """
    n_layer, n_head = shape
    rng = np.random.default_rng(seed)
    u = (rng.permutation(n_layer) + 0.5) / n_layer
    out = np.empty(shape, dtype=np.float64)
    for layer in range(n_layer):
        ranks = rng.permutation(n_head)
        out[layer] = 1.0 - (ranks + u[layer]) / n_head
    return out.astype(np.float32)


def task_accuracy(
    llm: Any, problems: list[dict[str, str]], max_tokens: int, reward: Callable[..., list[float]] = T.recall_reward
) -> int:
    """Problems answered correctly: the question alone through the chat template (as in training), greedy."""
    tasks = [Task(p["question"], p["answer"]) for p in problems]
    res = run_tasks(llm, tasks, max_tokens=max_tokens, label="", sparsity=None, system=None, reward=reward)
    return sum(int(o["correct"]) for o in res.outputs)


def kv_mib(path: Path, sparsity: float, threads: int) -> float:
    """KV MiB (full + local cache) of the model at n_ctx 8192."""
    from rlkv_edge import runtime

    llm = open_model(path, n_ctx=KV_CTX, sparsity=sparsity, n_threads=threads)
    try:
        full, local = runtime.kv_bytes(llm)
    finally:
        llm.close()
    return (full + local) / 2**20


def build_masks(heads: HeadScores, n_random: int) -> dict[str, np.ndarray]:
    """The score tables to compare, by name."""
    shape = heads.scores.shape
    masks = {"learned": heads.scores}
    for seed in RANDOM_SEEDS[:n_random]:
        masks[f"random-{seed}"] = random_scores(shape, seed)
    masks["uniform"] = uniform_scores(shape, 0)
    return masks


def convert_masks(src: Path, heads: HeadScores, masks: dict[str, np.ndarray], out_dir: Path) -> dict[str, Path]:
    """One converted GGUF per score table (same S and W as the learned file)."""
    paths = {}
    for name, scores in masks.items():
        dst = out_dir / f"{name}.rlkv.gguf"
        table = HeadScores(scores, heads.sink_size, heads.window_size, name, dict(heads.model), {})
        convert_gguf(src, table, dst, progress=False)
        paths[name] = dst
    return paths


def evaluate_config(
    path: Path,
    s: float,
    problems: list[dict[str, str]],
    tokens: list[int],
    base_lp: np.ndarray | None,
    args: argparse.Namespace,
) -> tuple[int, np.ndarray, float, float]:
    """(correct answers, text logprobs, mean KL, top-1 agreement) of one model at one sparsity."""
    llm = open_model(path, n_ctx=max(len(tokens), 512) + 16, sparsity=s, n_threads=args.threads)
    try:
        ok = task_accuracy(llm, problems, args.max_tokens)
    finally:
        llm.close()
    llm = open_model(path, n_ctx=len(tokens) + 16, sparsity=s, n_threads=args.threads, logits_all=True)
    try:
        lp = text_logprobs(llm, tokens)
    finally:
        llm.close()
    kl, top1 = compare_logprobs(base_lp, lp) if base_lp is not None else (0.0, 1.0)
    return ok, lp, kl, top1


def speedups(
    paths: dict[str, Path], src: Path, sparsities: list[float], args: argparse.Namespace
) -> dict[float, float]:
    """tg128 tokens/s at depth d with the learned mask at each s, over the unconverted model."""
    configs = [BenchConfig("none", src, None)] + [BenchConfig(f"s={s:g}", paths["learned"], s) for s in sparsities]
    res = run_bench(
        configs,
        n_ctx=KV_CTX,
        depths=[args.bench_depth],
        n_pp=0,
        n_tg=128,
        reps=1,
        n_threads=args.threads,
        log=lambda m: print(f"  bench {m}", file=sys.stderr),
    )
    base = res[0].tg[args.bench_depth]
    return {s: r.tg[args.bench_depth] / base for s, r in zip(sparsities, res[1:], strict=True)}


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The results table (accuracy, KL, top-1, KV MiB, speed-up) grouped by sparsity."""
    n = meta["n_problems"]
    lines = [
        f"held-out key recall: {n} problems; text: {meta['text_tokens']} tokens; S={meta['sink']}, "
        f"W={meta['window']}; KV at n_ctx {KV_CTX}; tg128 at depth {meta['bench_depth']} vs the unconverted model",
        "",
        "| s | mask | full heads | accuracy | mean KL (nats) | top-1 agree | KV MiB | tg128 speed-up |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = "–" if r.accuracy is None else f"{100 * r.accuracy:.1f}%"
        kl = "–" if r.mean_kl is None else f"{r.mean_kl:.4f}"
        top1 = "–" if r.top1 is None else f"{100 * r.top1:.1f}%"
        kv = "–" if r.kv_mib is None else f"{r.kv_mib:.2f}"
        sp = "–" if r.tg_speedup is None else f"{r.tg_speedup:.2f}×"
        lines.append(f"| {r.sparsity:g} | {r.mask} | {r.n_full_heads} | {acc} | {kl} | {top1} | {kv} | {sp} |")
    summary = meta.get("summary")
    if summary:
        lines += ["", summary]
    by_s = summary_by_sparsity(rows)
    if by_s:
        lines += ["", by_s]
    return "\n".join(lines)


def against_random(rows: list[Row], s: float) -> tuple[Row, list[Row], Row | None] | None:
    """(learned, random masks, uniform mask) measured at s, or None when there is nothing to compare."""
    at = [r for r in rows if r.sparsity == s]
    learned = next((r for r in at if r.mask == "learned"), None)
    rand = [r for r in at if r.mask.startswith("random")]
    if learned is None or not rand or learned.accuracy is None:
        return None
    return learned, rand, next((r for r in at if r.mask == "uniform"), None)


def kl_ratio(learned: Row, rand: list[Row]) -> float:
    """Mean KL of the learned mask over the mean KL of the random masks."""
    r_kl = float(np.mean([r.mean_kl or 0.0 for r in rand]))
    return (learned.mean_kl or 0.0) / r_kl if r_kl > 0 else float("nan")


def summary_by_sparsity(rows: list[Row]) -> str:
    """Learned vs the random masks (mean and per seed) and the per-layer-uniform mask, one line per s."""
    lines = [
        "| s | learned acc. | random acc. (mean; per seed) | uniform acc. | learned KL | random KL (mean; per seed) "
        "| learned / random KL |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted({r.sparsity for r in rows if r.mask == "learned"}):
        found = against_random(rows, s)
        if found is None or found[0].mean_kl is None:
            continue
        learned, rand, uni = found
        accs = [100 * (r.accuracy or 0.0) for r in rand]
        kls = [r.mean_kl or 0.0 for r in rand]
        uni_acc = "–" if uni is None or uni.accuracy is None else f"{100 * uni.accuracy:.1f}%"
        lines.append(
            f"| {s:g} | {100 * (learned.accuracy or 0.0):.1f}% | {np.mean(accs):.1f}% "
            f"({', '.join(f'{a:.1f}' for a in accs)}) | {uni_acc} | {learned.mean_kl:.4f} | {np.mean(kls):.4f} "
            f"({', '.join(f'{k:.4f}' for k in kls)}) | {kl_ratio(learned, rand):.2f} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def summarize(rows: list[Row], s: float = 0.5) -> str:
    """One line on the acceptance comparison at s: learned vs full cache and vs the mean random mask."""
    full = next(r for r in rows if r.mask == "full cache")
    found = against_random(rows, s)
    if found is None or full.accuracy is None:
        return ""
    learned, rand, _ = found
    acc = learned.accuracy or 0.0
    r_acc = float(np.mean([r.accuracy or 0.0 for r in rand]))
    return (
        f"At s={s:g}: learned {100 * acc:.1f}% vs full cache {100 * full.accuracy:.1f}% "
        f"({100 * (acc - full.accuracy):+.1f} points) and vs mean random {100 * r_acc:.1f}% "
        f"({100 * (acc - r_acc):+.1f} points); mean KL learned / random = {kl_ratio(learned, rand):.2f}."
    )


def default_threads() -> int:
    """Half the CPU cores (at least 1): the default --threads of the bench scripts."""
    return max(1, (os.cpu_count() or 2) // 2)


def render(path: Path) -> str:
    """The tables of a saved results file (--render)."""
    saved = json.loads(path.read_text())
    return markdown([Row(**r) for r in saved["rows"]], saved)


def eval_tokens(path: Path, n_text: int, threads: int) -> list[int]:
    """The first n_text tokens of the long synthetic text, tokenized by the model at path."""
    probe = open_model(path, n_ctx=512, sparsity=0.0, n_threads=threads)
    text = T.long_text(T.TEXT_SEED, n_words=int(n_text * 1.1))
    tokens = probe.tokenize(text.encode("utf-8"), add_bos=True)
    probe.close()
    if len(tokens) < n_text:
        raise SystemExit(f"long text has {len(tokens)} tokens < {n_text}")
    return tokens[:n_text]


class Measurer:
    """Measures configurations into table rows, reusing (and updating) the --cache JSON."""

    def __init__(
        self,
        args: argparse.Namespace,
        heads: HeadScores,
        paths: dict[str, Path],
        problems: list[dict[str, str]],
        tokens: list[int],
        log: Callable[[str], None],
    ) -> None:
        self.args, self.paths, self.problems, self.tokens, self.log = args, paths, problems, tokens, log
        self.n = args.n_problems
        self.cache = json.loads(args.cache.read_text()) if args.cache and args.cache.is_file() else {}
        self.settings = f"{self.n}|{len(tokens)}|{args.max_tokens}|{heads.sink_size}|{heads.window_size}"
        self.only = set(args.masks.split(",")) if args.masks else None
        self.base: dict[str, Any] = {}
        self.rows: list[Row] = []

    def base_logprobs(self) -> np.ndarray:
        """The full cache's text logprobs (the learned file at s = 0: re-ordering heads is exact)."""
        if "lp" not in self.base:
            ok, self.base["lp"], _, _ = evaluate_config(
                self.paths["learned"], 0.0, self.problems, self.tokens, None, self.args
            )
            self.base["ok"] = ok
        return self.base["lp"]

    def full_cache(self, n_heads: int) -> None:
        """The full-cache row (the learned file at s = 0)."""
        full_key = f"full|-|0|{self.settings}"
        if full_key not in self.cache:
            self.base_logprobs()
            kv = kv_mib(self.paths["learned"], 0.0, 1)
            self.cache[full_key] = {"ok": self.base["ok"], "kl": 0.0, "top1": 1.0, "kv": kv}
        c0 = self.cache[full_key]
        self.rows.append(Row("full cache", 0.0, n_heads, c0["ok"] / self.n, c0["ok"], 0.0, 1.0, c0["kv"]))
        self.log(f"full cache: accuracy {c0['ok']}/{self.n}")

    def measure(self, name: str, scores: np.ndarray, path: Path, s: float) -> None:
        """One mask at sparsity s (s = 1: all local), from the cache or measured; skipped if not in --masks."""
        n, args = self.n, self.args
        digest = hashlib.sha256(np.ascontiguousarray(scores, dtype=np.float32).tobytes()).hexdigest()[:16]
        key = f"{name}|{digest if s < 1 else '-'}|{s:g}|{self.settings}"
        if key in self.cache:
            c = self.cache[key]
            self.log(f"s={s:g} {name}: from {args.cache}")
        elif self.only is not None and name not in self.only:
            return
        else:
            ok, _, kl, top1 = evaluate_config(path, s, self.problems, self.tokens, self.base_logprobs(), args)
            c = {"ok": ok, "kl": kl, "top1": top1, "kv": kv_mib(path, s, 1)}
            self.cache[key] = c
            if args.cache:
                args.cache.write_text(json.dumps(self.cache, indent=1))
        n_full = int(full_heads_per_layer(scores, s).sum())
        label = "all local" if s >= 1 else name
        self.rows.append(Row(label, s, n_full, c["ok"] / n, c["ok"], c["kl"], c["top1"], c["kv"]))
        self.log(f"s={s:g} {label}: accuracy {c['ok']}/{n}, KL {c['kl']:.4f}, top-1 {c['top1']:.4f}")


def measure_rows(
    args: argparse.Namespace,
    src: Path,
    heads: HeadScores,
    problems: list[dict[str, str]],
    log: Callable[[str], None],
) -> tuple[list[Row], int]:
    """(table rows, text tokens): every mask at every sparsity, all-local and the speed-ups."""
    with tempfile.TemporaryDirectory(prefix="rlkv-showcase-") as tmp:
        masks = build_masks(heads, args.n_random)
        paths = convert_masks(src, heads, masks, Path(tmp))
        log(f"converted {len(paths)} masks ({', '.join(paths)}), S={heads.sink_size}, W={heads.window_size}")
        tokens = eval_tokens(paths["learned"], args.text_tokens, args.threads)
        m = Measurer(args, heads, paths, problems, tokens, log)
        m.full_cache(heads.scores.size)
        for s in args.sparsity:
            for name, path in paths.items():
                m.measure(name, masks[name], path, s)
        m.measure("all-local", heads.scores, paths["learned"], 1.0)
        if not args.no_bench:
            sp = speedups(paths, src, args.sparsity, args)
            for r in m.rows:
                if r.mask == "learned":
                    r.tg_speedup = sp.get(r.sparsity)
            log("bench: " + ", ".join(f"s={s:g} {v:.2f}×" for s, v in sp.items()))
    return m.rows, len(tokens)


def results_meta(
    args: argparse.Namespace, src: Path, heads_path: Path, heads: HeadScores, n_tokens: int, elapsed: float
) -> dict[str, Any]:
    """The settings a results file records next to its rows."""
    return {
        "model": src.name,
        "heads": str(heads_path),
        "heads_method": heads.method,
        "sink": heads.sink_size,
        "window": heads.window_size,
        "n_problems": args.n_problems,
        "eval_seed": T.EVAL_SEED,
        "text_seed": T.TEXT_SEED,
        "text_tokens": n_tokens,
        "random_seeds": list(RANDOM_SEEDS[: args.n_random]),
        "sparsities": args.sparsity,
        "bench_depth": args.bench_depth,
        "kv_ctx": KV_CTX,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "quick": args.quick,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "elapsed_s": round(elapsed, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the defaults that depend on --quick filled in."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=Path, default=None, help="heads file (default: the bundled default)")
    ap.add_argument("--model", type=Path, default=None, help="unconverted GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/showcase.json"))
    ap.add_argument("--quick", action="store_true", help="s=0.5 only, fewer problems, a short text (the demo)")
    ap.add_argument("--n-problems", type=int, default=None, help="held-out problems (default 60, quick 12)")
    ap.add_argument("--text-tokens", type=int, default=None, help="long text length (default 4096, quick 1024)")
    ap.add_argument("--sparsity", type=float, action="append", default=None, help="repeatable")
    ap.add_argument("--n-random", type=int, default=None, help="random-mask seeds (default 3, quick 1)")
    ap.add_argument("--max-tokens", type=int, default=16, help="answer length limit")
    ap.add_argument("--bench-depth", type=int, default=None, help="tg128 depth (default 6144, quick 2048)")
    ap.add_argument("--no-bench", action="store_true", help="skip the speed measurement")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--cache", type=Path, default=None, help="JSON cache of measured rows (reused when it matches)")
    ap.add_argument("--masks", default=None, help="only measure these masks (comma-separated; cached rows still shown)")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON", help="print the tables of a results file")
    args = ap.parse_args(argv)
    q = args.quick
    args.n_problems = args.n_problems or (12 if q else 60)
    args.text_tokens = args.text_tokens or (1024 if q else 4096)
    args.sparsity = args.sparsity or ([0.5] if q else list(SPARSITIES))
    args.n_random = args.n_random if args.n_random is not None else (1 if q else 3)
    args.bench_depth = args.bench_depth or (2048 if q else BENCH_DEPTH)
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, print and save the table (or reprint a saved one with --render)."""
    args = parse_args(argv)
    if args.render is not None:
        print(render(args.render))
        return 0
    src = args.model or bundled_model_path()
    heads_path = args.heads or default_heads_path()
    if heads_path is None:
        print("no heads file: pass --heads or ship rlkv_edge/data/default_heads.json", file=sys.stderr)
        return 2
    heads = load_heads(heads_path)
    problems = T.problems_for(args.n_problems, T.EVAL_SEED, heads.sink_size, heads.window_size)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    rows, n_tokens = measure_rows(args, src, heads, problems, log)
    meta = results_meta(args, src, heads_path, heads, n_tokens, time.time() - t0)
    sparsities = args.sparsity
    meta["summary"] = summarize(rows, 0.5 if 0.5 in sparsities else sparsities[0])
    table = markdown(rows, meta)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "rows": [r.__dict__ for r in rows], "table": table}, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

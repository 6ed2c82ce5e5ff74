"""The end-to-end table for SmolLM2-135M-Instruct: learned head scores against masks that ignore the task.

For every sparsity s and every mask (the learned scores, random scores with 3 seeds, per-layer-uniform
masks, and all-local), through the llama.cpp runtime (patched, per-head KV):

* task accuracy on held-out key-recall problems (rlkv_edge.tasks, seed EVAL_SEED; the code to recall sits
  ~170 tokens before the question, far beyond the local heads' S + W);
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rlkv_edge.convert import convert_gguf

from rlkv_edge import tasks as T
from rlkv_edge.bench import BenchConfig, run_bench
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


def task_accuracy(llm: Any, problems: list[dict[str, str]], max_tokens: int) -> int:
    """Problems answered correctly: the question alone through the chat template (as in training), greedy."""
    tasks = [Task(p["question"], p["answer"]) for p in problems]
    res = run_tasks(llm, tasks, max_tokens=max_tokens, label="", sparsity=None, system=None, reward=T.recall_reward)
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


DEMO_TRAIN = [
    "--reward", "rlkv_edge.tasks:recall_reward", "--prompt-template", "{question}",
    "--steps", "2", "--group-size", "4", "--prompts-per-step", "1", "--micro-batch-size", "4",
    "--max-completion-tokens", "16", "--temperature", "0.7", "--lr", "1e-2", "--beta", "1e-3", "--tau", "0.5",
    "--sink", "16", "--window", "64", "--backend", "reference", "--dtype", "float32", "--seed", "0",
    "--save-steps", "1000",
]  # fmt: skip


# the held-out problems as the training reward scores them: the question alone, the whole answer scored
EVAL_TASK_ARGS = ["--system", "", "--reward", "rlkv_edge.tasks:recall_reward", "-s", "0.5", "--max-tokens", "16"]


def demo(out_dir: Path, threads: int) -> int:
    """`make demo`: a short training run → convert → eval → a one-shot chat answer → the quick table.

    The short run (2 GRPO steps) only proves the pipeline end to end: its gates have barely moved, so its
    eval at s = 0.5 shows what untrained scores cost. The chat answer (`rlkv-edge chat` without a MODEL)
    and the table use the shipped default heads file (docs/RESULTS.md says how it was trained).
    """
    import shlex
    import subprocess

    exe = Path(sys.executable).parent / "rlkv-edge"
    cli = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rlkv_edge.cli"]
    src = bundled_model_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    heads, model = out_dir / "heads.json", out_dir / "model.rlkv.gguf"
    (out_dir / "long_text.txt").write_text(T.long_text(n_words=1200), encoding="utf-8")
    T.write_jsonl(T.make_problems(32, T.TRAIN_SEED), out_dir / "train.jsonl")
    T.write_jsonl(T.make_problems(6, T.EVAL_SEED), out_dir / "eval.jsonl")
    print(f"wrote 32 training problems (seed {T.TRAIN_SEED}) and a long text to {out_dir}")
    print(
        "train -> convert -> eval run on a 2-step training run (barely trained: expect a loss at s=0.5); "
        "chat and the table use the shipped default heads (a 40-step run, docs/RESULTS.md)"
    )
    question = T.make_problems(1, T.EVAL_SEED + 1)[0]["question"]
    text, jsonl, ckpt = str(out_dir / "long_text.txt"), str(out_dir / "train.jsonl"), str(out_dir / "ckpt")
    evals = str(out_dir / "eval.jsonl")
    th = ["--threads", str(threads)]
    steps = [
        (
            "train",
            [*cli, "train", str(src), "--dataset", jsonl, "--out", str(heads), "--output-dir", ckpt, *DEMO_TRAIN],
        ),
        ("convert", [*cli, "convert", str(src), "--mask", str(heads), "--output", str(model), "--force"]),
        ("eval", [*cli, "eval", str(model), "--text", text, "--tasks", evals, *EVAL_TASK_ARGS, "--ctx", "1024", *th]),
        (
            "chat",
            [*cli, "chat", "--prompt", question, "--temperature", "0", "--seed", "0", "-n", "24", *th],
        ),
        ("table", [sys.executable, __file__, "--quick", *th, "--out", str(out_dir / "showcase.json")]),
    ]
    t0 = time.time()
    for name, cmd in steps:
        print(f"\n== {name} ({time.time() - t0:.0f}s): {shlex.join(cmd)}", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        rc = subprocess.call(cmd, env=env)
        if rc != 0:
            print(f"demo: step '{name}' failed (exit {rc})", file=sys.stderr)
            return rc
    print(f"\ndemo finished in {time.time() - t0:.0f}s", flush=True)
    return 0


LOG_COLUMNS = (
    ("step", "step"),
    ("reward", "rewards/recall_reward/mean"),
    ("reward_std", "reward_std"),
    ("mean_gate", "rlkv/mean_gate"),
    ("heads_below_half", "rlkv/heads_below_half"),
    ("penalty_weight", "rlkv/penalty_weight"),
    ("frac_reward_zero_std", "frac_reward_zero_std"),
    ("grad_norm", "grad_norm"),
    ("step_time_s", "step_time"),
)


def export_training_log(checkpoint: Path, csv_path: Path, png_path: Path | None) -> int:
    """Per-step reward and mean gate from a checkpoint's trainer_state.json → CSV (+ plot)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    rows = [h for h in state["log_history"] if "rlkv/mean_gate" in h]
    rewards = [h.get("rewards/recall_reward/mean", h.get("reward")) for h in rows]  # other rewards log "reward"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(",".join(name for name, _ in LOG_COLUMNS) + "\n")
        for h, reward in zip(rows, rewards, strict=True):
            vals = [h.get(key) if name != "reward" else reward for name, key in LOG_COLUMNS]
            f.write(",".join("" if v is None else f"{v:.6g}" for v in vals) + "\n")
    if png_path is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["step"] for h in rows]
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.plot(steps, rewards, "o-", label="mean reward")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("mean reward (0/1)")
        ax.set_ylim(-0.05, 1.05)
        ax2 = ax.twinx()
        ax2.plot(steps, [h["rlkv/mean_gate"] for h in rows], "s-", color="tab:red", label="mean gate α")
        ax2.set_ylabel("mean gate α", color="tab:red")
        fig.legend(loc="lower left", fontsize=8)
        ax.set_title("rlkv-edge train on SmolLM2-135M-Instruct (key recall, CPU)", fontsize=9)
        fig.tight_layout()
        fig.savefig(png_path)
    print(f"wrote {len(rows)} steps to {csv_path}" + (f" and {png_path}" if png_path else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--cache", type=Path, default=None, help="JSON cache of measured rows (reused when it matches)")
    ap.add_argument("--masks", default=None, help="only measure these masks (comma-separated; cached rows still shown)")
    ap.add_argument("--demo", type=Path, default=None, metavar="DIR", help="run the `make demo` pipeline in DIR")
    ap.add_argument("--training-log", type=Path, default=None, metavar="CHECKPOINT", help="export CSV + plot")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON", help="print the tables of a results file")
    args = ap.parse_args(argv)
    if args.render is not None:
        saved = json.loads(args.render.read_text())
        print(markdown([Row(**r) for r in saved["rows"]], saved))
        return 0
    if args.training_log is not None:
        return export_training_log(args.training_log, Path("docs/training_log.csv"), Path("docs/training_log.png"))
    if args.demo is not None:
        return demo(args.demo, args.threads)
    q = args.quick
    n_problems = args.n_problems or (12 if q else 60)
    n_text = args.text_tokens or (1024 if q else 4096)
    sparsities = args.sparsity or ([0.5] if q else list(SPARSITIES))
    n_random = args.n_random if args.n_random is not None else (1 if q else 3)
    args.bench_depth = args.bench_depth or (2048 if q else BENCH_DEPTH)

    src = args.model or bundled_model_path()
    heads_path = args.heads or default_heads_path()
    if heads_path is None:
        print("no heads file: pass --heads or ship rlkv_edge/data/default_heads.json", file=sys.stderr)
        return 2
    heads = load_heads(heads_path)
    problems = T.make_problems(n_problems, T.EVAL_SEED)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rlkv-showcase-") as tmp:
        masks = build_masks(heads, n_random)
        paths = convert_masks(src, heads, masks, Path(tmp))
        log(f"converted {len(paths)} masks ({', '.join(paths)}), S={heads.sink_size}, W={heads.window_size}")
        probe = open_model(paths["learned"], n_ctx=512, sparsity=0.0, n_threads=args.threads)
        text = T.long_text(T.TEXT_SEED, n_words=int(n_text * 1.1))
        tokens = probe.tokenize(text.encode("utf-8"), add_bos=True)
        probe.close()
        if len(tokens) < n_text:
            raise SystemExit(f"long text has {len(tokens)} tokens < {n_text}")
        tokens = tokens[:n_text]

        cache = json.loads(args.cache.read_text()) if args.cache and args.cache.is_file() else {}
        settings = f"{n_problems}|{len(tokens)}|{args.max_tokens}|{heads.sink_size}|{heads.window_size}"
        base: dict[str, Any] = {}

        def base_logprobs() -> np.ndarray:
            """The full cache's text logprobs (the learned file at s = 0: re-ordering heads is exact)."""
            if "lp" not in base:
                ok, base["lp"], _, _ = evaluate_config(paths["learned"], 0.0, problems, tokens, None, args)
                base["ok"] = ok
            return base["lp"]

        full_key = f"full|-|0|{settings}"
        if full_key not in cache:
            base_logprobs()
            cache[full_key] = {"ok": base["ok"], "kl": 0.0, "top1": 1.0, "kv": kv_mib(paths["learned"], 0.0, 1)}
        c0 = cache[full_key]
        rows.append(Row("full cache", 0.0, heads.scores.size, c0["ok"] / n_problems, c0["ok"], 0.0, 1.0, c0["kv"]))
        log(f"full cache: accuracy {c0['ok']}/{n_problems}")

        def measure(name: str, scores: np.ndarray, path: Path, s: float) -> None:
            digest = hashlib.sha256(np.ascontiguousarray(scores, dtype=np.float32).tobytes()).hexdigest()[:16]
            key = f"{name}|{digest if s < 1 else '-'}|{s:g}|{settings}"
            if key in cache:
                c = cache[key]
                log(f"s={s:g} {name}: from {args.cache}")
            elif only is not None and name not in only:
                return
            else:
                ok, _, kl, top1 = evaluate_config(path, s, problems, tokens, base_logprobs(), args)
                c = {"ok": ok, "kl": kl, "top1": top1, "kv": kv_mib(path, s, 1)}
                cache[key] = c
                if args.cache:
                    args.cache.write_text(json.dumps(cache, indent=1))
            n_full = int(full_heads_per_layer(scores, s).sum())
            label = "all local" if s >= 1 else name
            rows.append(Row(label, s, n_full, c["ok"] / n_problems, c["ok"], c["kl"], c["top1"], c["kv"]))
            log(f"s={s:g} {label}: accuracy {c['ok']}/{n_problems}, KL {c['kl']:.4f}, top-1 {c['top1']:.4f}")

        only = set(args.masks.split(",")) if args.masks else None
        for s in sparsities:
            for name, path in paths.items():
                measure(name, masks[name], path, s)
        measure("all-local", heads.scores, paths["learned"], 1.0)
        if not args.no_bench:
            sp = speedups(paths, src, sparsities, args)
            for r in rows:
                if r.mask == "learned":
                    r.tg_speedup = sp.get(r.sparsity)
            log("bench: " + ", ".join(f"s={s:g} {v:.2f}×" for s, v in sp.items()))

    meta: dict[str, Any] = {
        "model": src.name,
        "heads": str(heads_path),
        "heads_method": heads.method,
        "sink": heads.sink_size,
        "window": heads.window_size,
        "n_problems": n_problems,
        "eval_seed": T.EVAL_SEED,
        "text_seed": T.TEXT_SEED,
        "text_tokens": len(tokens),
        "random_seeds": list(RANDOM_SEEDS[:n_random]),
        "sparsities": sparsities,
        "bench_depth": args.bench_depth,
        "kv_ctx": KV_CTX,
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "quick": q,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "elapsed_s": round(time.time() - t0, 1),
    }
    meta["summary"] = summarize(rows, 0.5 if 0.5 in sparsities else sparsities[0])
    table = markdown(rows, meta)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "rows": [r.__dict__ for r in rows], "table": table}, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: the pipeline on the bundled SmolLM2, each stage timed, every table labelled with what it shows.

    .venv/bin/python bench/demo.py build/demo     # what `make demo` runs

1. train    a 2-step GRPO run (`rlkv-edge train`): the mechanics only (reward and mean gate per step, a plot).
            Two steps do not train anything: its heads file is not used for any quality number.
2. convert  the shipped heads (rlkv_edge/data/default_heads.json, a real training run whose command it records)
            into DIR/model.rlkv.gguf, and random head scores (seed 0) into DIR/random-0.rlkv.gguf.
3. quality  with the shipped heads, in one process: key recall of a fact stated before the window and KL on
            held-out text (GPL-3), against the full cache, random heads at the same s and all-local. The
            problems, text and masks are the cross table's (docs/RESULTS.md), fewer of them.
4. front    which configuration to run at 8k: the README's table, read from bench/results/*.json (not re-run).
5. chat     one answer from `rlkv-edge chat` at the 8k configuration the table recommends below q8_0's memory.

The outputs (data, logs, heads file, converted models, training_log.csv/.png, quality.json) land in DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlkv_edge import tasks as T
from rlkv_edge.models import bundled_model_path, default_heads_path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # `python bench/demo.py` has bench/ on the path already; an import by file may not
    sys.path.insert(0, str(BENCH))
from showcase import default_threads, random_scores  # noqa: E402

DEMO_TRAIN = [
    "--reward", "rlkv_edge.tasks:recall_reward", "--prompt-template", "{question}",
    "--steps", "2", "--group-size", "4", "--prompts-per-step", "1", "--micro-batch-size", "4",
    "--max-completion-tokens", "16", "--temperature", "0.7", "--lr", "1e-2", "--beta", "1e-3", "--tau", "0.5",
    "--sink", "16", "--window", "64", "--backend", "reference", "--dtype", "float32", "--seed", "0",
    "--save-steps", "1000",
]  # fmt: skip

TEXT = Path("/usr/share/common-licenses/GPL-3")  # held out: the shipped heads were fitted on Apache-2.0
QUALITY_S = 0.75  # the sparsity of the 8k front's rlkv point (docs/RESULTS.md)
N_PROBLEMS = 8  # the first 8 of the cross table's 30 held-out key-recall problems
KL_TOKENS = 512  # the cross table: 2048
CHAT_FLAGS = ["-c", "8192", "-s", "0.75", "--window", "1024", "-ctk", "q8_0", "-ctv", "q4_0"]
MECHANICS = "2-step training run: mechanics only, not a quality result"


def log_rows(checkpoint_dir: Path) -> list[dict[str, Any]]:
    """Per-step log entries (those with a mean gate) of the latest checkpoint under a `train --output-dir`."""
    states = sorted(checkpoint_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name[11:]))
    if not states:
        return []
    history = json.loads(states[-1].read_text())["log_history"]
    return [h for h in history if "rlkv/mean_gate" in h]


def mechanics_table(rows: list[dict[str, Any]], gates: list[list[float]]) -> str:
    """The short run's per-step reward and mean gate, and where its gates ended, as a labelled markdown table."""
    lines = [
        f"{MECHANICS}",
        "",
        "| step | mean reward | reward std | groups with one reward | mean gate α | heads α < 0.5 | step time |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for h in rows:
        reward = h.get("rewards/recall_reward/mean", h.get("reward"))
        lines.append(
            f"| {h['step']} | {reward:.3f} | {h.get('reward_std', 0.0):.3f} | {h.get('frac_reward_zero_std', 0.0):.0%} "
            f"| {h['rlkv/mean_gate']:.4f} | {h.get('rlkv/heads_below_half', 0):.0f} | {h.get('step_time', 0.0):.0f}s |"
        )
    flat = [g for layer in gates for g in layer]
    if flat:
        lo, hi = min(flat), max(flat)
        lines += [
            "",
            f"Gates after {len(rows)} steps: {len(flat)} heads, α from {lo:.4f} to {hi:.4f} "
            f"({len({round(g, 6) for g in flat})} distinct). Groups whose completions all get the same "
            "reward give GRPO no signal; the gates then move only by the sparsity penalty. This heads file ranks "
            "nothing and is not used below: every quality number uses the shipped heads.",
        ]
    return "\n".join(lines)


def quality_table(points: list[Any], meta: dict[str, Any]) -> str:
    """Key recall, mean KL and top-1 per configuration, labelled with the heads, S/W and sample sizes."""
    lines = [
        f"Quality with the shipped heads ({meta['heads']}, {meta['method']}; trained, not by this demo): "
        f"S{meta['sink']}/W{meta['window']} (the file's), f16 cache, s = {meta['s']:g}. Key recall: "
        f"{meta['n_problems']} held-out problems, the code stated before S + W (the cross table's first "
        f"{meta['n_problems']} of 30); KL / top-1 against the full cache over {meta['n_tokens']} tokens of "
        f"{meta['text']}; greedy, {meta['threads']} threads.",
        "",
        "| config | full heads | key recall | mean KL (nats) | top-1 agree |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in points:
        ok = round((p.accuracy or 0.0) * meta["n_problems"])
        lines.append(
            f"| {p.config.label} | {p.extra.get('n_full', '–')} | {ok}/{meta['n_problems']} | {p.mean_kl:.4f} "
            f"| {p.top1:.1%} |"
        )
    ref = cross_table_reference()
    if ref:
        lines += ["", ref]
    lines += ["", "S64/W256 with an f16 cache is not a setting to run: the 8k configurations are in the next table."]
    return "\n".join(lines)


def cross_table_reference(path: Path = BENCH / "results" / "cross_table.json") -> str:
    """The same rows in docs/RESULTS.md's cross table (more problems, a longer text), as one line."""
    if not path.is_file():
        return ""
    saved = json.loads(path.read_text())
    want = {("full cache", 0.0), ("distill", QUALITY_S), ("random-0", QUALITY_S), ("all local", 1.0)}
    rows = {(r["heads"], r["sparsity"]): r for r in saved["rows"] if (r["heads"], r["sparsity"]) in want}
    if len(rows) != len(want):
        return ""
    names = {
        "full cache": "full cache",
        "distill": "shipped heads",
        "random-0": "random seed 0",
        "all local": "all-local",
    }
    cells = [
        f"{names[h]} {100 * r['recall']:.0f}% / {r['kl']:.4f}"
        for (h, _), r in sorted(rows.items(), key=lambda x: x[0][1])
    ]
    return (
        f"docs/RESULTS.md's cross table at s = {QUALITY_S:g} ({saved['n_recall']} problems, KL over "
        f"{saved['text_tokens']} tokens; key recall / KL): " + ", ".join(cells) + "."
    )


def front_table() -> str:
    """The README's 8k table, generated from bench/results/*.json by bench/results_page.py."""
    import results_page

    return results_page.render("readme").rstrip("\n")


def measure_quality(model: Path, random_model: Path, out_dir: Path, threads: int, log: Callable[[str], None]) -> str:
    """The quality stage: full cache, shipped heads, random heads and all-local; writes quality.json."""
    from rlkv_edge.evaluate import load_reward, load_tasks, text_tokens
    from rlkv_edge.frontier import FrontierConfig, measure, to_json
    from rlkv_edge.heads import load_heads
    from rlkv_edge.masks import full_heads_per_layer
    from rlkv_edge.models import read_model

    mf = read_model(model)
    sink, window = int(mf.info["sink_size"]), int(mf.info["window_size"])
    heads = default_heads_path()
    shipped = load_heads(heads) if heads else None
    text = TEXT if TEXT.is_file() else out_dir / "long_text.txt"
    if not TEXT.is_file():
        text.write_text(T.long_text(T.TEXT_SEED, n_words=1200), encoding="utf-8")
    words, lead = T.recall_size(sink, window)
    problems = T.write_jsonl(T.make_problems(N_PROBLEMS, T.EVAL_SEED, words, lead), out_dir / "recall.jsonl")
    tasks = load_tasks(str(problems))
    tokens = text_tokens(mf, text, KL_TOKENS)
    s = QUALITY_S
    configs = [
        FrontierConfig("full cache", "full", model, 0.0),
        FrontierConfig(f"shipped heads, s={s:g}", "rlkv", model, s),
        FrontierConfig(f"random heads (seed 0), s={s:g}", "random", random_model, s),
        FrontierConfig("all-local (s=1)", "all-local", model, 1.0),
    ]
    opts = {"max_tokens": 16, "system": "", "reward": load_reward("rlkv_edge.tasks:recall_reward")}
    n_ctx = max(len(tokens), 768) + 16
    points = measure(
        configs, tokens, n_ctx=n_ctx, depth=None, n_threads=threads, tasks=tasks, task_options=opts, log=log
    )
    if shipped is not None:
        n_heads = shipped.scores.size
        for p in points:
            sc = random_scores(shipped.scores.shape, 0) if p.config.family == "random" else shipped.scores
            p.extra["n_full"] = f"{int(full_heads_per_layer(sc, p.config.sparsity or 0.0).sum())}/{n_heads}"
    meta = {
        "heads": "rlkv_edge/data/default_heads.json",
        "method": shipped.method if shipped else "?",
        "sink": sink,
        "window": window,
        "s": s,
        "n_problems": N_PROBLEMS,
        "n_tokens": len(tokens),
        "text": text.name,
        "threads": threads,
    }
    (out_dir / "quality.json").write_text(json.dumps(to_json(points, meta), indent=1) + "\n")
    return quality_table(points, meta)


def convert_random(src: Path, dst: Path) -> None:
    """The bundled model converted with random head scores (seed 0; the cross table's random-0), the shipped S/W."""
    from rlkv_edge.convert import convert_gguf
    from rlkv_edge.heads import HeadScores, load_heads

    heads_path = default_heads_path()
    if heads_path is None:
        raise SystemExit("no shipped heads file (rlkv_edge/data/default_heads.json)")
    shipped = load_heads(heads_path)
    table = HeadScores(random_scores(shipped.scores.shape, 0), shipped.sink_size, shipped.window_size, "random-0")
    convert_gguf(src, table, dst, progress=False, force=True)


def run_train(cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run `rlkv-edge train` with its output in log_path; its per-step lines are echoed."""
    with open(log_path, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if line.startswith("step "):
                print(f"  {line.rstrip()}", flush=True)
        return proc.wait()


class Stages:
    """Runs the demo's stages in order, timing each; prints the timings at the end."""

    def __init__(self) -> None:
        self.t0 = time.time()
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, what: str, fn: Callable[[], int | None]) -> bool:
        """Run one stage; False (and a message on stderr) when it failed."""
        print(f"\n== {name} ({time.time() - self.t0:.0f}s): {what}", flush=True)
        t = time.time()
        rc = fn() or 0
        self.times.append((name, time.time() - t))
        if rc != 0:
            print(f"demo: stage '{name}' failed (exit {rc})", file=sys.stderr)
        return rc == 0

    def summary(self) -> str:
        """Each stage's wall time and the total."""
        parts = ", ".join(f"{name} {sec:.0f}s" for name, sec in self.times)
        return f"demo finished in {time.time() - self.t0:.0f}s ({parts})"


def demo(out_dir: Path, threads: int, only: set[str] | None = None) -> int:
    """`make demo`: train (mechanics) → convert the shipped heads → quality → the 8k table → one chat answer."""
    exe = Path(sys.executable).parent / "rlkv-edge"
    cli = [str(exe)] if exe.is_file() else [sys.executable, "-m", "rlkv_edge.cli"]
    src = bundled_model_path()
    heads_path = default_heads_path()
    if heads_path is None:
        print("demo: no shipped heads file (rlkv_edge/data/default_heads.json)", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    model, random_model = out_dir / "model.rlkv.gguf", out_dir / "random-0.rlkv.gguf"
    jsonl, ckpt, trained = out_dir / "train.jsonl", out_dir / "ckpt", out_dir / "heads-2-steps.json"
    T.write_jsonl(T.make_problems(32, T.TRAIN_SEED), jsonl)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    st = Stages()

    def train() -> int:
        cmd = [*cli, "train", str(src), "--dataset", str(jsonl), "--out", str(trained), "--output-dir", str(ckpt)]
        cmd += DEMO_TRAIN
        print(f"$ {shlex.join(cmd)}\n  (full output: {out_dir / 'train.log'})", flush=True)
        rc = run_train(cmd, out_dir / "train.log", env)
        if rc != 0:
            return rc
        rows = log_rows(ckpt)
        gates = json.loads(trained.read_text()).get("training", {}).get("gates", [])
        print("\n" + mechanics_table(rows, gates))
        try:
            from training_log import plot_training_log

            rewards = [h.get("rewards/recall_reward/mean", h.get("reward")) for h in rows]
            plot_training_log(rows, rewards, out_dir / "training_log.png")
            print(f"reward and gate curves: {out_dir / 'training_log.png'}")
        except ImportError:  # matplotlib is optional
            pass
        return 0

    def convert() -> int:
        cmd = [*cli, "convert", str(src), "--mask", str(heads_path), "--output", str(model), "--force"]
        print(f"$ {shlex.join(cmd)}", flush=True)
        rc = subprocess.call(cmd, env=env)
        if rc == 0:
            convert_random(src, random_model)
            print(f"random head scores (seed 0), same S/W: {random_model}")
        return rc

    def quality() -> int:
        t = time.time()

        def log(msg: str) -> None:  # KV bytes at this short n_ctx say nothing: the 8k table has them
            print(f"  [{time.time() - t:4.0f}s] {re.sub(r'KV [0-9.]+ MiB, ', '', msg)}", flush=True)

        print("\n" + measure_quality(model, random_model, out_dir, threads, log))
        return 0

    def front() -> int:
        print(
            "Which configuration to run: measured at 8k on this model (bench/results/*.json, not re-run here; "
            "the verdict, speed and limits: docs/RESULTS.md)\n"
        )
        print(front_table())
        return 0

    question = T.make_problems(1, T.EVAL_SEED + 1)[0]["question"]
    chat_cmd = [*cli, "chat", str(model), *CHAT_FLAGS, "-p", question, "--temp", "0", "--seed", "0", "-n", "24"]
    chat_cmd += ["--threads", str(threads), "--stats"]

    def chat() -> int:
        rc = _chat()
        if rc == 0:
            print(
                "A warning above about layers without a full head is chat's rule of thumb; this exact configuration "
                "is measured in the 8k table (row 'rlkv s=0.75 S64/W1024, -ctk q8_0 -ctv q4_0')."
            )
        return rc

    def _chat() -> int:
        shown = ["QUESTION" if a == question else a for a in chat_cmd]
        print(
            f"$ {shlex.join(shown)}\nQUESTION ({len(question.split())} words): a story stating a code, then: "
            f"{question.splitlines()[-1]}",
            flush=True,
        )
        return subprocess.call(chat_cmd, env=env)

    for name, what, fn in (
        ("train", MECHANICS, train),
        ("convert", "the shipped heads (a real training run) into the bundled model", convert),
        ("quality", "shipped heads vs full cache, random heads and all-local", quality),
        ("front", "the 8k results table (from JSON)", front),
        ("chat", "one answer at rlkv s=0.75 S64/W1024 + q8_0/q4_0, n_ctx 8192", chat),
    ):
        if only is not None and name not in only:
            continue
        if not st.run(name, what, fn):
            return 1
    print("\n" + st.summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo pipeline in DIR."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, metavar="DIR", help="output folder (make demo: build/demo)")
    ap.add_argument("--threads", type=int, default=default_threads(), help="llama.cpp threads (half the cores)")
    ap.add_argument("--only", default=None, help="comma-separated stages to run (debugging; default: all)")
    args = ap.parse_args(argv)
    return demo(args.out_dir, args.threads, set(args.only.split(",")) if args.only else None)


if __name__ == "__main__":
    sys.exit(main())

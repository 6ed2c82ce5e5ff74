"""`make demo`: a short training run → convert → eval → a one-shot chat answer → the quick showcase table.

    .venv/bin/python bench/demo.py build/demo     # what `make demo` runs (a few minutes on 2 cores)

Every step is the `rlkv-edge` CLI (or `bench/showcase.py --quick`) in a subprocess, on the bundled SmolLM2;
the outputs (data, heads file, converted model, showcase.json) land in DIR.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rlkv_edge import tasks as T
from rlkv_edge.models import bundled_model_path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # `python bench/demo.py` has bench/ on the path already; an import by file may not
    sys.path.insert(0, str(BENCH))
import showcase  # noqa: E402

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
        "chat and the table use the shipped default heads (distillation on a real text, docs/RESULTS.md)"
    )
    question = T.make_problems(1, T.EVAL_SEED + 1)[0]["question"]
    text, jsonl, ckpt = str(out_dir / "long_text.txt"), str(out_dir / "train.jsonl"), str(out_dir / "ckpt")
    evals = str(out_dir / "eval.jsonl")
    th = ["--threads", str(threads)]
    table = [sys.executable, str(Path(showcase.__file__).resolve()), "--quick", *th]
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
        ("table", [*table, "--out", str(out_dir / "showcase.json")]),
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


def main(argv: list[str] | None = None) -> int:
    """Run the demo pipeline in DIR."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, metavar="DIR", help="output folder (make demo: build/demo)")
    ap.add_argument("--threads", type=int, default=showcase.default_threads())
    args = ap.parse_args(argv)
    return demo(args.out_dir, args.threads)


if __name__ == "__main__":
    sys.exit(main())

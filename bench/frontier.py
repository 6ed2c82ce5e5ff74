"""The memory–quality–speed frontier on the bundled SmolLM2 (issue 13): `rlkv-edge frontier` with the
settings docs/RESULTS.md reports, on a real English text no one here wrote (the GPL-3 licence text that
Debian ships), writing bench/results/frontier.json and docs/frontier.png.

    python bench/frontier.py [--text FILE] [--tokens 4096] [--depth 2048] [--threads 2] [--quick] [--recall N]
    python bench/frontier.py --render bench/results/frontier.json   # table and plot again, no measuring

Run it without OMP_WAIT_POLICY=PASSIVE (the test suite's setting): sleeping threads add a wake-up to every
single-token decode, which cut tg128 2.7x on this machine and squeezed every decode ratio towards 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path("/usr/share/common-licenses/GPL-3")


def main(argv: list[str] | None = None) -> int:
    """Run the frontier on the bundled model with the shipped default heads."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--depth", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="512 tokens, no speed test, one random mask")
    ap.add_argument("--recall", type=int, default=0, help="also N held-out key-recall problems per point")
    ap.add_argument("--no-speed", action="store_true", help="skip the pp512 / tg128 test")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frontier.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "frontier.png")
    ap.add_argument("--render", type=Path, help="re-print the table and re-draw the plot of a results JSON")
    args = ap.parse_args(argv)
    if args.render:
        return render_results(args.render, args.plot)
    from rlkv_edge.cli.options import default_model

    model = default_model().path
    cmd = [str(Path(sys.executable).parent / "rlkv-edge"), "frontier", str(model), "--text", str(args.text)]
    cmd += ["--threads", str(args.threads), "--out", str(args.out), "--plot", str(args.plot)]
    if args.recall:  # held-out key recall (rlkv_edge.tasks, the seed the cross table uses), scored as trained
        from rlkv_edge import tasks as T

        recall = args.out.with_name(args.out.stem + ".recall.jsonl")
        T.write_jsonl(T.problems_for(args.recall, T.EVAL_SEED, 64, 256), recall)  # code > S64 + W256 back
        cmd += ["--tasks", str(recall), "--system", "", "--reward", "rlkv_edge.tasks:recall_reward"]
        cmd += ["--max-tokens", "16"]
    if args.no_speed:
        cmd += ["--no-speed"]
    if args.quick:
        cmd += ["--tokens", "512", "--no-speed", "--random", "1"]
    else:  # within ~35 min on 2 cores: quantized caches prefill slowly on a CPU, so fewer of them
        cmd += ["--tokens", str(args.tokens), "--depth", str(args.depth), "-s", "0.5", "-s", "0.75"]
        cmd += ["--cache-type", "q8_0", "--cache-type", "q4_0", "--cache-type", "q8_0/q4_0"]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def render_results(path: Path, png: Path) -> int:
    """Print the table of a results file and draw its plot again."""
    import json

    from rlkv_edge.frontier import from_json, plot, render

    data = json.loads(path.read_text())
    points = from_json(data)
    print(render(points, data))
    plot(points, png, f"{data['model']}: KV memory vs KL ({data['n_tokens']} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

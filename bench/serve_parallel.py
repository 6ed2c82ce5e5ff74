"""Aggregate decode throughput of `rlkv-edge serve --parallel 4` (llama-server slots) with 4 clients vs 1 (issue 12).

    python bench/serve_parallel.py [--parallel 4] [--ctx 8192] [--threads 2] [--tokens 128]

The bundled SmolLM2 converted with the default heads (s = 0.5). 1 client sends 4 requests one after another;
then 4 clients send one request each at once. Generated tokens per second of wall time, from the server's own
usage counts. Prints a table and writes bench/results/serve_parallel.json. This machine and thread count only.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RLKV_EDGE = str(Path(sys.executable).parent / "rlkv-edge")
PROMPTS = [f"Write a short story about a {animal} who learns to swim." for animal in ("cat", "dog", "fox", "owl")]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _complete(base: str, prompt: str, tokens: int) -> int:
    """One greedy chat completion of up to `tokens` tokens; the tokens generated."""
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="none", timeout=600)
    out = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=tokens
    )
    return out.usage.completion_tokens if out.usage else 0


def main() -> None:
    """Start the server, measure 1 client then N clients, print and save."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("bench/results/serve_parallel.json"))
    args = ap.parse_args()

    from rlkv_edge.cli.options import default_model

    model = default_model(quiet=True).path
    port = _port()
    cmd = [RLKV_EDGE, "serve", str(model), "--parallel", str(args.parallel), "--ctx", str(args.ctx)]
    proc = subprocess.Popen([*cmd, "--port", str(port), "-t", str(args.threads)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        _complete(base, "Hello", 4)  # warm-up
        prompts = PROMPTS * (args.parallel // len(PROMPTS) + 1)
        t0 = time.perf_counter()
        one = sum(_complete(base, p, args.tokens) for p in prompts[: args.parallel])
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            many = sum(pool.map(lambda p: _complete(base, p, args.tokens), prompts[: args.parallel]))
        t_many = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = [
        {"clients": n, "requests": args.parallel, "tokens": tok, "seconds": sec, "tokens_per_s": tok / sec}
        for n, tok, sec in ((1, one, t_one), (args.parallel, many, t_many))
    ]
    print(f"# rlkv-edge serve --parallel {args.parallel} (llama-server), {model.name}, {args.threads} threads")
    print(f"{'clients':>7} {'tokens':>6} {'seconds':>8} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['clients']:>7} {r['tokens']:>6} {r['seconds']:>8.2f} {r['tokens_per_s']:>9.1f}")
    ratio = rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"aggregate throughput, {args.parallel} clients / 1 client: {ratio:.2f}x")
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "ctx": args.ctx}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result, "rows": rows, "ratio": ratio}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

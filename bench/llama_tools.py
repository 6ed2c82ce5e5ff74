"""llama.cpp's own tools on the per-head cache, beside rlkv-edge's measurements of the same thing (issue 12).

    python bench/llama_tools.py [--text FILE] [--ctx 2048] [--threads 2] [--out bench/results/llama_tools.json]

1. `llama-perplexity --kl-divergence`: base logits from the original SmolLM2 GGUF, then the converted file
   (default heads) at s = 0, 0.25, 0.5 chosen with llama.cpp's own `--override-kv rlkv.sparsity=float:S`.
   Beside it, `rlkv-edge eval --text` at s = 0.5 on the same text and context. The two measure differently:
   llama-perplexity scores the second half of each ctx-token chunk against the original file; eval scores one
   ctx-token prefix against the converted file at s = 0 (reordered heads). So llama-perplexity also runs with
   base logits from the converted file at s = 0, eval's reference, and `rlkv-edge eval --text --chunks -1`
   scores llama-perplexity's positions: the second half of every ctx-token chunk.
2. `llama-bench -p 512 -n 128 -d 0,2048,6144` on the converted file (s = 0.5 as converted), and
   `rlkv-edge bench` at the same depths, in the same run.
Prints tables and writes JSON. Timings: this machine, the given threads; shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RLKV_EDGE = str(Path(sys.executable).parent / "rlkv-edge")
TEXT = Path("/usr/share/common-licenses/GPL-3")


def run(*args: str) -> str:
    """Run a command; its stdout + stderr (fails loudly)."""
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def kld(text: str) -> dict[str, float]:
    """Mean KLD and same-top-p of llama-perplexity's KL-divergence summary."""
    out: dict[str, float] = {}
    for key, pattern in (("kl", r"Mean\s+KLD:\s+([-\d.]+)"), ("top1", r"Same top p:\s+([\d.]+)")):
        m = re.search(pattern, text)
        if m:
            out[key] = float(m.group(1)) / (100.0 if key == "top1" else 1.0)
    return out


def main() -> None:
    """Measure and print both tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=TEXT)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/llama_tools.json"))
    args = ap.parse_args()

    from rlkv_edge.cli.options import default_model
    from rlkv_edge.models import bundled_model_path

    src, model = bundled_model_path(), default_model(quiet=True).path
    t = str(args.threads)
    result: dict[str, object] = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as d:
        base = str(Path(d) / "base.kld")
        common = ["-f", str(args.text), "-c", str(args.ctx), "-t", t, "-b", "512"]
        run(RLKV_EDGE, "llama", "perplexity", "-m", str(src), *common, "--kl-divergence-base", base)
        rows = []
        for s in (0.0, 0.25, 0.5):
            out = run(RLKV_EDGE, "llama", "perplexity", "-m", str(model), *common, "--kl-divergence-base", base,
                      "--kl-divergence", "--override-kv", f"rlkv.sparsity=float:{s}")  # fmt: skip
            rows.append({"sparsity": s, **kld(out)})
        # the reference eval uses: the converted file at s = 0 (re-ordered heads, every head full)
        base_s0 = str(Path(d) / "base_s0.kld")
        run(RLKV_EDGE, "llama", "perplexity", "-m", str(model), *common, "--kl-divergence-base", base_s0,
            "--override-kv", "rlkv.sparsity=float:0")  # fmt: skip
        out = run(RLKV_EDGE, "llama", "perplexity", "-m", str(model), *common, "--kl-divergence-base", base_s0,
                  "--kl-divergence", "--override-kv", "rlkv.sparsity=float:0.5")  # fmt: skip
        same_ref = {"sparsity": 0.5, "base": "converted file at s = 0", **kld(out)}
    ev = json.loads(run(RLKV_EDGE, "eval", str(model), "--text", str(args.text), "-s", "0.5", "-c", str(args.ctx),
                        "-t", t, "--json"))  # fmt: skip
    chunked = json.loads(run(RLKV_EDGE, "eval", str(model), "--text", str(args.text), "-s", "0.5", "-c",
                             str(args.ctx), "--chunks", "-1", "-t", t, "--json"))  # fmt: skip
    same_positions = chunked["text"]["results"][-1]
    result["eval_text_chunks_s05"] = chunked
    result["perplexity_kld"] = rows
    result["perplexity_kld_base_s0"] = same_ref
    result["eval_text_s05"] = ev
    print(f"# llama-perplexity --kl-divergence, {args.text.name}, ctx {args.ctx}, base = original GGUF")
    print(f"{'s':>5} {'mean KLD':>9} {'same top-1':>10}")
    for r in rows:
        print(f"{r['sparsity']:>5} {r.get('kl', float('nan')):>9.4f} {r.get('top1', float('nan')):>10.3f}")
    print(f"# base = the converted file at s = 0 (eval's reference): s = 0.5 mean KLD {same_ref.get('kl', 0):.4f}")
    print("# rlkv-edge eval --text at s = 0.5:", json.dumps(ev)[:400])
    print(f"# rlkv-edge eval --text --chunks -1 (llama-perplexity's positions), s = 0.5: "
          f"{same_positions['mean_kl']:.4f} over {same_positions['n_tokens']} positions")  # fmt: skip

    depths = "0,2048,6144"
    bench = run(RLKV_EDGE, "llama", "bench", "-m", str(model), "-p", "512", "-n", "128", "-d", depths, "-t", t,
                "-o", "json")  # fmt: skip
    result["llama_bench"] = json.loads(bench[bench.index("[") : bench.rindex("]") + 1])
    ours = run(RLKV_EDGE, "bench", str(model), "-s", "0.5", "-d", depths, "-p", "512", "-n", "128", "-t", t,
               "--json")  # fmt: skip
    result["rlkv_edge_bench"] = json.loads(ours[ours.index("{") :])
    print(f"# llama-bench -p 512 -n 128 -d {depths} (t/s)")
    for r in result["llama_bench"]:  # type: ignore[union-attr]
        print(f"  {r.get('n_prompt')} pp / {r.get('n_gen')} tg @ depth {r.get('n_depth')}: {r.get('avg_ts'):.1f} t/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Speed and memory at long context on random-weight GGUFs of two real attention shapes, in one process each.

Speed and memory do not depend on the weights' values, so each shape is a random Q4_0 GGUF written here
(random quant blocks, a filler vocabulary) and converted with placeholder head scores (as bench/kv_runtime.py):

    smollm2  SmolLM2-135M's shape: 30 layers, 9 query / 3 KV heads, D=64, n_embd 576, FFN 1536, vocab 49152
             (tied output), as the real model.
    r1-8b    DeepSeek-R1-Distill-Llama-8B's per-layer attention: 32 query / 8 KV heads, D=128, n_embd 4096;
             fewer layers (4) and a small FFN (4096) and vocab (32000) so it runs on 2 cores. Weights are a
             smaller share of a token's traffic than in the real 8B (32 layers, FFN 14336), so KV savings show
             more here than they would there.

For f16, q8_0, rlkv s=0.5 and rlkv s=0.5 + q8_0 at depths 4k, 8k, 16k and 32k: KV bytes, the peak and the
final resident memory of a fresh process per configuration (context filled to the largest depth), pp512 and
tg128 against stock f16 (ratios in one process), and the decode traffic model's predicted tg ratio
(rlkv_edge/traffic.py). Depth is reached by marking cells as used without computing them (`rlkv-edge bench
--fill mark`): attention's cost does not depend on the values.

    .venv/bin/python bench/scale.py [--shapes smollm2,r1-8b] [--depths 4096,8192,16384,32768] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from kv_runtime import placeholder_scores

import rlkv_edge
from rlkv_edge.atomic import atomic_write_text
from rlkv_edge.bench import BenchConfig, markdown_table, results_json, run_bench
from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores

DEPTHS = (4096, 8192, 16384, 32768)
Q4_0 = gguf.GGMLQuantizationType.Q4_0


@dataclass(frozen=True)
class Shape:
    """A llama-architecture model shape."""

    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    tied_output: bool

    @property
    def head_dim(self) -> int:
        """D = n_embd / n_head."""
        return self.n_embd // self.n_head


SHAPES = {
    "smollm2": Shape("smollm2", 30, 576, 9, 3, 1536, 49152, tied_output=True),
    "r1-8b": Shape("r1-8b", 4, 4096, 32, 8, 4096, 32000, tied_output=False),
}


def _random_q4_0(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A [rows, cols] Q4_0 tensor of random blocks (scale 0.01, random nibbles), as raw bytes."""
    block, size = gguf.GGML_QUANT_SIZES[Q4_0]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    raw[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)  # d of every block
    return raw.reshape(rows, cols // block * size)


def write_random_gguf(shape: Shape, path: Path, seed: int = 0) -> None:
    """A loadable llama GGUF of `shape` with random Q4_0 weights and a filler SentencePiece vocabulary."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"random-{shape.name}")
    w.add_context_length(131072)
    w.add_embedding_length(shape.n_embd)
    w.add_block_count(shape.n_layer)
    w.add_feed_forward_length(shape.n_ff)
    w.add_head_count(shape.n_head)
    w.add_head_count_kv(shape.n_head_kv)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    specials = ["<unk>", "<s>", "</s>"]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"▁t{i}" for i in range(shape.n_vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    types += [gguf.TokenType.NORMAL] * (shape.n_vocab - len(types))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * shape.n_vocab)
    w.add_token_types([int(t) for t in types])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def add(name: str, rows: int, cols: int) -> None:
        w.add_tensor(name, _random_q4_0(rng, rows, cols), raw_dtype=Q4_0)

    e, d, kv = shape.n_embd, shape.head_dim, shape.n_head_kv * shape.head_dim
    add("token_embd.weight", shape.n_vocab, e)
    for il in range(shape.n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", np.ones(e, dtype=np.float32))
        add(p + "attn_q.weight", shape.n_head * d, e)
        add(p + "attn_k.weight", kv, e)
        add(p + "attn_v.weight", kv, e)
        add(p + "attn_output.weight", e, shape.n_head * d)
        w.add_tensor(p + "ffn_norm.weight", np.ones(e, dtype=np.float32))
        add(p + "ffn_gate.weight", shape.n_ff, e)
        add(p + "ffn_up.weight", shape.n_ff, e)
        add(p + "ffn_down.weight", e, shape.n_ff)
    w.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    if not shape.tied_output:
        add("output.weight", shape.n_vocab, e)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


_PEAK = """
import sys
from rlkv_edge import runtime
from rlkv_edge.bench import bench_loaded
from rlkv_edge.models import open_model
path, s, tk, tv, n_ctx, depth = sys.argv[1:]
llm = open_model(path, n_ctx=int(n_ctx), sparsity=None if s == "-" else float(s), type_k=tk, type_v=tv,
                 n_threads=2, n_batch=512, n_ubatch=512)
bench_loaded(llm, [int(depth)], n_pp=512, n_tg=1, fill="mark")
with open("/proc/self/statm") as f:
    print(int(f.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE"))
"""


def rss_mib(cfg: BenchConfig, n_ctx: int, depth: int) -> tuple[float, float]:
    """(peak, final) resident memory in MiB of a fresh process that loads `cfg`, fills `depth` and runs pp512 +
    tg1 there; final is measured with the model still loaded."""
    s = "-" if cfg.sparsity is None else str(cfg.sparsity)
    args = [sys.executable, "-c", _PEAK, str(cfg.path), s, str(cfg.type_k), str(cfg.type_v), str(n_ctx), str(depth)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    final = proc.stdout.read().strip()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0 or not final:
        raise SystemExit(f"RSS run of {cfg.label} failed (status {status})")
    return usage.ru_maxrss / 1024, int(final) / 2**20  # ru_maxrss: KiB on Linux


def bench_shape(shape: Shape, depths: list[int], threads: int, reps: int, tmp: Path) -> dict:
    """Write, convert and measure one shape; prints the table, returns the JSON record."""
    src = tmp / f"random-{shape.name}.gguf"
    dst = tmp / f"random-{shape.name}.rlkv.gguf"
    write_random_gguf(shape, src)
    heads = HeadScores(
        placeholder_scores(shape.n_layer, shape.n_head_kv),
        sink_size=64,
        window_size=256,
        method="placeholder (bench/scale.py)",
    )
    convert_gguf(src, heads, dst, progress=False)
    configs = [
        BenchConfig("f16", src, None, type_k="f16", type_v="f16"),
        BenchConfig("q8_0", src, None, type_k="q8_0", type_v="q8_0"),
        BenchConfig("rlkv s=0.5", dst, 0.5, type_k="f16", type_v="f16"),
        BenchConfig("rlkv s=0.5 + q8_0", dst, 0.5, type_k="q8_0", type_v="q8_0"),
    ]
    n_ctx = max(depths) + 512
    t0 = time.perf_counter()
    rss = {c.label: rss_mib(c, n_ctx, max(depths)) for c in configs}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = run_bench(configs, n_ctx=n_ctx, depths=depths, reps=reps, n_threads=threads, fill="mark", log=log)
    table = markdown_table(results)
    print(f"\n## {shape.name}: {shape}\nn_ctx {n_ctx}, {threads} threads, S=64 W=256, depth by --fill mark\n")
    print(table)
    d = max(depths)
    print(
        f"\n| config | KV MiB | × f16 | peak RSS MiB @ d{d} | RSS MiB after pp512 @ d{d} |\n|---|---:|---:|---:|---:|"
    )
    for r in results:
        peak, final = rss[r.label]
        print(f"| {r.label} | {r.kv_mib:.1f} | {r.kv_mib / results[0].kv_mib:.3f} | {peak:.0f} | {final:.0f} |")
    out = results_json(results, shape=shape.__dict__, n_ctx=n_ctx, depths=depths, threads=threads, reps=reps)
    out["rss_mib"] = {k: {"peak": v[0], "after_pp": v[1]} for k, v in rss.items()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    """Measure every shape; write bench/results/scale.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    shapes = [SHAPES[s] for s in args.shapes.split(",")]
    record = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "rlkv_edge": rlkv_edge.__version__,
        "note": "random Q4_0 weights; depth reached with --fill mark; ratios within one process per shape",
        "shapes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            record["shapes"][shape.name] = bench_shape(shape, depths, args.threads, args.reps, Path(tmp))
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

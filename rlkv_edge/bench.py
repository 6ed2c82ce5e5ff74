"""`rlkv-edge bench`: llama-bench-style pp512 / tg128 at several depths, with and without compression.

Everything runs in one process on one library build, so the speed ratios against the uncompressed model
are meaningful even on a noisy machine (docs/DESIGN.md §7). Timing follows llama-bench: for each depth d the
context holds d random tokens (not timed; reached by extending the context or rolling it back, or else
by refilling it), then `tg` tokens are decoded one at a time (generation), or `pp` tokens in batches of
n_batch (prompt processing), each run starting from depth d. With fill="mark" the depth is reached by marking
cells as used without computing them (`runtime.fill_seq`): same speed, since attention's cost does not depend
on the values, and no O(d²) prefill, so 32k depths fit on a laptop.

Each result also carries its decode traffic model (rlkv_edge/traffic.py): the tg ratio that memory bandwidth
alone predicts, printed beside the measured one.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlkv_edge.errors import RlkvError, UsageError
from rlkv_edge.memory import MIB, format_mib
from rlkv_edge.models import ModelFile, open_model, read_model
from rlkv_edge.traffic import DecodeShape, predicted_ratio, weight_bytes

DEFAULT_DEPTHS = (0, 2048, 6144)
FILLS = ("compute", "mark")


@dataclass
class BenchConfig:
    """One model setting to measure: a file, a sparsity (None: the file's own, or no rlkv metadata) and KV cache
    types (None: run_bench's)."""

    label: str
    path: Path
    sparsity: float | None = None
    model: ModelFile | None = None  # the file's header, when the caller has read it already
    type_k: str | None = None
    type_v: str | None = None
    env: dict[str, str] | None = None  # environment while it runs, e.g. {"RLKV_DECODE_ATTN": "0"}


@contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    """Set `env` for the block (the native library reads it when it builds a graph), then restore it."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class BenchResult:
    """Measurements of one configuration."""

    label: str
    path: str
    sparsity: float | None
    rlkv_enabled: bool
    n_full_heads: int | None
    n_heads: int
    kv_bytes_full: int
    kv_bytes_local: int
    n_ctx: int
    decode: DecodeShape | None = None  # what the traffic model needs (None: not known)
    # which attention kernel decoded its tokens: "grouped" (native/rlkv/rlkv-decode.cpp ran) or "ggml"
    decode_kernel: str | None = None
    pp: dict[int, float] = field(default_factory=dict)  # depth -> tokens/s
    tg: dict[int, float] = field(default_factory=dict)
    pp_std: dict[int, float] = field(default_factory=dict)
    tg_std: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls, cfg: BenchConfig, inf: Any, kv_full: int, kv_local: int, n_ctx: int, decode: DecodeShape | None = None
    ) -> BenchResult:
        """An empty result for `cfg`, from what the runtime reported (`runtime.info`, `runtime.kv_bytes`)."""
        return cls(
            label=cfg.label,
            path=str(cfg.path),
            sparsity=inf.sparsity if inf.enabled else None,
            rlkv_enabled=inf.enabled,
            n_full_heads=inf.n_full_total if inf.enabled else None,
            n_heads=inf.n_layer * inf.n_head_kv,
            kv_bytes_full=kv_full,
            kv_bytes_local=kv_local,
            n_ctx=n_ctx,
            decode=decode,
        )

    @property
    def kv_mib(self) -> float:
        """Total KV cache in MiB."""
        return (self.kv_bytes_full + self.kv_bytes_local) / MIB


class _Decoder:
    """Low-level decoding on a loaded llama_cpp.Llama (as llama-bench does: llama_decode on batches)."""

    def __init__(self, llm: Any, seed: int = 0, fill: str = "compute") -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llm
        self.ctx = llm._ctx.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = llm.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = llm.n_vocab()
        self.rng = random.Random(seed)
        self.fill = fill

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)

    def _tokens(self, n: int) -> list[int]:
        return [self.rng.randrange(self.n_vocab) for _ in range(n)]

    def decode(self, tokens: Sequence[int], pos0: int) -> None:
        """Decode tokens at positions pos0.. in batches of n_batch (logits for each batch's last token)."""
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i : i + self.n_batch]
            b = self.batch
            b.n_tokens = len(chunk)
            for j, tok in enumerate(chunk):
                b.token[j] = tok
                b.pos[j] = pos0 + i + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = False
            b.logits[len(chunk) - 1] = True
            rc = self.lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise RlkvError(f"llama_decode failed with status {rc} at position {pos0 + i}")
        self.lib.llama_synchronize(self.ctx)

    def extend(self, n: int, pos0: int) -> None:
        """Add n positions from pos0 on: decoded random tokens, or (fill="mark") cells marked without computing."""
        if self.fill == "mark":
            from rlkv_edge import runtime

            runtime.fill_seq(self.llm, n)
        else:
            self.decode(self._tokens(n), pos0)

    def to_depth(self, depth: int, filled: int) -> int:
        """Make the sequence exactly `depth` tokens long (drop what follows, or refill from scratch)."""
        if filled == depth:
            return depth
        if 0 <= filled < depth:  # extend: what the context holds does not matter for speed
            self.extend(depth - filled, filled)
            return depth
        if filled > depth and depth > 0 and self.lib.llama_memory_seq_rm(self.mem, 0, depth, -1):
            return depth
        self.lib.llama_memory_clear(self.mem, True)
        if depth:
            self.extend(depth, 0)
        return depth

    def time_pp(self, depth: int, n: int) -> float:
        t0 = time.perf_counter()
        self.decode(self._tokens(n), depth)
        return n / (time.perf_counter() - t0)

    def time_tg(self, depth: int, n: int) -> float:
        toks = self._tokens(n)
        t0 = time.perf_counter()
        for i, tok in enumerate(toks):
            self.decode([tok], depth + i)
        return n / (time.perf_counter() - t0)


def _decode_shape(
    model: ModelFile, inf: Any, ring: int, type_k: str, type_v: str, weights: dict[Path, int]
) -> DecodeShape:
    """The traffic model's view of a loaded configuration."""
    shape = model.shape
    return DecodeShape(
        weight_bytes=weights[model.path],
        n_layer=inf.n_layer,
        n_head_kv=inf.n_head_kv,
        head_dim_k=shape.head_dim_k,
        head_dim_v=shape.head_dim_v,
        n_full=inf.n_full_total if inf.enabled else inf.n_layer * inf.n_head_kv,
        sink=inf.sink_size if inf.enabled else 0,
        window=inf.window_size if inf.enabled else 0,
        ring_cells=ring,
        type_k=type_k,
        type_v=type_v,
    )


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def bench_loaded(
    llm: Any,
    depths: Sequence[int],
    *,
    n_pp: int = 512,
    n_tg: int = 128,
    reps: int = 1,
    warmup: bool = True,
    fill: str = "compute",
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """pp and tg tokens/s per depth (a list of `reps` runs each) on an already loaded model; fill: how depth is
    reached ("compute": decode random tokens, as llama-bench; "mark": mark cells without computing)."""
    if fill not in FILLS:
        raise UsageError(f"--fill must be one of {', '.join(FILLS)}, got '{fill}'")
    dec = _Decoder(llm, fill=fill)
    pp: dict[int, list[float]] = {d: [] for d in depths}
    tg: dict[int, list[float]] = {d: [] for d in depths}
    try:
        filled = dec.to_depth(0, -1)
        if warmup:  # one small decode of each kind, as llama-bench does
            dec.decode(dec._tokens(min(n_pp, dec.n_batch)) if n_pp else [0], 0)
            filled = dec.to_depth(0, -1)
            dec.decode([0], 0)
            filled = dec.to_depth(0, -1)
        for d in sorted(depths):
            for _ in range(reps):
                # tg first: rolling back its few tokens is exact even for the local ring (slack n_ubatch),
                # so pp needs no refill; the next depth then extends the context instead of refilling it.
                if n_tg:
                    filled = dec.to_depth(d, filled)
                    tg[d].append(dec.time_tg(d, n_tg))
                    filled = d + n_tg
                if n_pp:
                    filled = dec.to_depth(d, filled)
                    pp[d].append(dec.time_pp(d, n_pp))
                    filled = d + n_pp
    finally:
        dec.close()
    return pp, tg


def run_bench(
    configs: Sequence[BenchConfig],
    *,
    n_ctx: int,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    n_pp: int = 512,
    n_tg: int = 128,
    reps: int = 1,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    type_k: str | None = None,
    type_v: str | None = None,
    fill: str = "compute",
    log: Callable[[str], None] | None = None,
    load_kwargs: dict[str, Any] | None = None,
) -> list[BenchResult]:
    """Measure every configuration (one model loaded at a time) in this process, reps round-robin; load_kwargs go
    to llama-cpp-python's Llama (flash_attn, n_batch, n_ubatch, use_mmap, use_mlock)."""
    from rlkv_edge import runtime

    need = max(depths) + max(n_pp, n_tg)
    if need > n_ctx:
        raise UsageError(f"depth {max(depths)} + {max(n_pp, n_tg)} tokens does not fit --ctx {n_ctx}")
    if reps < 1:
        raise UsageError(f"--reps must be at least 1, got {reps}")
    files: dict[Path, ModelFile] = {}  # each file's header is read once, whatever the configs and reps
    weights: dict[Path, int] = {}
    for cfg in configs:
        if cfg.path not in files:
            files[cfg.path] = cfg.model or read_model(cfg.path)
            weights[cfg.path] = weight_bytes(cfg.path)
    kwargs: dict[str, Any] = {"n_batch": 512, "n_ubatch": 512}
    if n_threads:
        kwargs.update(n_threads=n_threads, n_threads_batch=n_threads)
    kwargs.update(load_kwargs or {})
    results: list[BenchResult] = []
    pp_runs: list[dict[int, list[float]]] = [{d: [] for d in depths} for _ in configs]
    tg_runs: list[dict[int, list[float]]] = [{d: [] for d in depths} for _ in configs]
    # Repetitions go round-robin over the configurations, so drift on a noisy machine hits all alike.
    for rep in range(reps):
        for i, cfg in enumerate(configs):
            if log:
                at = f" at s={cfg.sparsity:g}" if cfg.sparsity is not None else ""
                log(f"{cfg.label}: loading {cfg.path.name}{at}" + (f" (rep {rep + 1}/{reps})" if reps > 1 else ""))
            tk, tv = cfg.type_k or type_k, cfg.type_v or type_v
            with _environment(cfg.env):
                llm = open_model(
                    files[cfg.path],
                    n_ctx=n_ctx,
                    sparsity=cfg.sparsity,
                    n_gpu_layers=n_gpu_layers,
                    type_k=tk,
                    type_v=tv,
                    **kwargs,
                )
                try:
                    inf = runtime.info(llm)
                    full, local = runtime.kv_bytes(llm)
                    ring = runtime.kv_cells(llm)[1]
                    runs0 = runtime.grouped_decode_runs()
                    pp, tg = bench_loaded(llm, depths, n_pp=n_pp, n_tg=n_tg, reps=1, fill=fill)
                    kernel = "grouped" if runtime.grouped_decode_runs() > runs0 else "ggml"
                finally:
                    llm.close()
            for d in depths:
                pp_runs[i][d] += pp[d]
                tg_runs[i][d] += tg[d]
            if rep == 0:
                decode = _decode_shape(files[cfg.path], inf, ring, tk or "f16", tv or "f16", weights)
                results.append(BenchResult.of(cfg, inf, full, local, n_ctx, decode))
                results[-1].decode_kernel = kernel
            if log:
                cells = ", ".join(
                    [f"pp{n_pp}@{d} {pp[d][0]:.1f} t/s" for d in depths if pp[d]]
                    + [f"tg{n_tg}@{d} {tg[d][0]:.1f} t/s" for d in depths if tg[d]]
                )
                log(f"{cfg.label}: KV {format_mib(full + local)}, {kernel} decode; {cells}")
    for res, pp_r, tg_r in zip(results, pp_runs, tg_runs, strict=True):
        for d in depths:
            if pp_r[d]:
                res.pp[d], res.pp_std[d] = _mean_std(pp_r[d])
            if tg_r[d]:
                res.tg[d], res.tg_std[d] = _mean_std(tg_r[d])
    return results


def predicted_tg_ratio(r: BenchResult, base: BenchResult, depth: int, n_tg: int = 128) -> float | None:
    """tg of `r` over `base` at `depth` as decode traffic predicts it (mean position of the n_tg tokens)."""
    if r.decode is None or base.decode is None:
        return None
    return predicted_ratio(r.decode, base.decode, depth + n_tg // 2)


def markdown_table(results: Sequence[BenchResult], n_pp: int = 512, n_tg: int = 128) -> str:
    """llama-bench-style table; ratios are against the first result (the uncompressed model). For tg, the
    ratio memory traffic predicts (rlkv_edge/traffic.py), measured/predicted, and the kernel that decoded."""
    base = results[0]
    rows = [
        "| model | sparsity | K/V | full heads | KV MiB | test | t/s | × base | × predicted | meas/pred |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        s = "none" if r.sparsity is None else f"{r.sparsity:.4g}"
        types = f"{r.decode.type_k}/{r.decode.type_v}" if r.decode else "–"
        heads = f"{r.n_full_heads if r.n_full_heads is not None else r.n_heads}/{r.n_heads}"
        kv = f"{r.kv_mib:.2f} ({r.kv_mib / base.kv_mib:.2f}×)" if base.kv_mib else f"{r.kv_mib:.2f}"
        for kind, data, std, n in (("pp", r.pp, r.pp_std, n_pp), ("tg", r.tg, r.tg_std, n_tg)):
            for d, v in data.items():
                test = f"{kind}{n}" + (f" @ d{d}" if d else "")
                if kind == "tg" and r.decode_kernel:
                    test += f" ({r.decode_kernel})"  # the attention kernel that decoded (RLKV_DECODE_ATTN)
                sd = std.get(d, 0.0)
                speed = f"{v:.2f} ± {sd:.2f}" if sd else f"{v:.2f}"
                ref = (base.pp if kind == "pp" else base.tg).get(d)
                ratio = f"{v / ref:.2f}" if ref else "–"
                pred = predicted_tg_ratio(r, base, d, n) if kind == "tg" else None
                pred_s = f"{pred:.2f}" if pred else "–"
                eff = f"{v / ref / pred:.2f}" if pred and ref else "–"
                rows.append(
                    f"| {r.label} | {s} | {types} | {heads} | {kv} | {test} | {speed} | {ratio} | {pred_s} | {eff} |"
                )
    return "\n".join(rows)


def results_json(results: Sequence[BenchResult], n_tg: int = 128, **meta: Any) -> dict[str, Any]:
    """A JSON-ready summary (ratios against the first result, and the traffic model's tg ratios, included)."""
    base = results[0]
    out = []
    for r in results:
        d = asdict(r)
        d["kv_mib"] = r.kv_mib
        d["kv_ratio"] = r.kv_mib / base.kv_mib if base.kv_mib else None
        for key in ("pp", "tg", "pp_std", "tg_std"):
            d[key] = {str(k): v for k, v in d[key].items()}
        d["pp_ratio"] = {str(k): v / base.pp[k] for k, v in r.pp.items() if base.pp.get(k)}
        d["tg_ratio"] = {str(k): v / base.tg[k] for k, v in r.tg.items() if base.tg.get(k)}
        d["tg_ratio_predicted"] = {str(k): predicted_tg_ratio(r, base, k, n_tg) for k in r.tg}
        if r.decode is not None:
            d["decode_bytes_per_token"] = {str(k): r.decode.bytes_per_token(k + n_tg // 2) for k in r.tg}
            d["decode_gb_per_s"] = {str(k): v * r.decode.bytes_per_token(k + n_tg // 2) / 1e9 for k, v in r.tg.items()}
        out.append(d)
    return {"baseline": base.label, "n_tg": n_tg, **meta, "results": out}


def parse_depths(text: str) -> list[int]:
    """ "0,2048,6144" -> [0, 2048, 6144]."""
    try:
        depths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--depths must be comma-separated integers, got '{text}'") from None
    if not depths or depths[0] < 0:
        raise UsageError(f"--depths must be non-negative integers, got '{text}'")
    return depths

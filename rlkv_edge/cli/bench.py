"""`rlkv-edge bench`: llama-bench-style pp / tg at several depths and KV MiB, with and without compression."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rlkv_edge.bench import BenchConfig, markdown_table, parse_depths, results_json, run_bench
from rlkv_edge.cli.app import progress
from rlkv_edge.cli.options import (
    BatchOpt,
    CacheKOpt,
    CacheVOpt,
    Fill,
    FlashAttnOpt,
    GpuOpt,
    ModelOpt,
    ModelPathArg,
    NoMmapOpt,
    RuntimeOptions,
    SparsitiesOpt,
    ThreadsOpt,
    UbatchOpt,
    env,
    need_model,
)
from rlkv_edge.errors import UsageError
from rlkv_edge.models import read_model, sparsity_configs


def bench(
    model: ModelPathArg = None,
    model_opt: ModelOpt = None,
    sparsity: SparsitiesOpt = None,
    depths: Annotated[str, typer.Option("--depths", "-d", help="Comma-separated depths.")] = "0,2048,6144",
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx-size", "-c", "--ctx", min=1, envvar=env("CTX_SIZE"), help="n_ctx (default: max depth + 512)."
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option("--baseline", help="Uncompressed GGUF to compare with (default: MODEL at s=0)."),
    ] = None,
    n_prompt: Annotated[
        int, typer.Option("--n-prompt", "-p", min=0, help="Prompt tokens for pp (llama-bench's -p).")
    ] = 512,
    n_gen: Annotated[
        int, typer.Option("--n-gen", "-n", min=0, help="Generated tokens for tg (llama-bench's -n).")
    ] = 128,
    reps: Annotated[int, typer.Option("--reps", "-r", min=1, help="Repetitions per test.")] = 1,
    threads: ThreadsOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    fill: Annotated[
        Fill,
        typer.Option(
            "--fill",
            help="How each depth is reached: 'compute' decodes random tokens (as llama-bench -d); 'mark' marks the "
            "cells as used without computing them (speed only: attention's cost does not depend on the values, "
            "and a 32k depth takes no 32k-token prefill).",
        ),
    ] = "compute",
    flash_attn: FlashAttnOpt = "auto",
    batch_size: BatchOpt = None,
    ubatch_size: UbatchOpt = None,
    no_mmap: NoMmapOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
) -> None:
    """pp/tg speed at several depths and KV MiB, without compression and at each sparsity, in one process."""
    ds = parse_depths(depths)
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise UsageError("--n-prompt and --n-gen must be >= 0 and not both 0")
    n_ctx = ctx or max(ds) + max(n_prompt, n_gen)
    opts = RuntimeOptions(
        ctx=n_ctx,
        n_gpu_layers=n_gpu_layers,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        threads=threads,
        flash_attn=flash_attn,
        n_batch=batch_size,
        n_ubatch=ubatch_size,
        mmap=not no_mmap,
    )
    target = read_model(need_model(model, model_opt))
    base = read_model(baseline) if baseline is not None else None
    (none, s0), *compressed = sparsity_configs(target, sparsity or ([0.5] if target.converted else []))
    first = BenchConfig("baseline", base.path, None, base) if base else BenchConfig(none, target.path, s0, target)
    configs = [first] + [BenchConfig(label, target.path, s, target) for label, s in compressed]
    results = run_bench(
        configs,
        n_ctx=opts.ctx,
        depths=ds,
        n_pp=n_prompt,
        n_tg=n_gen,
        reps=reps,
        n_threads=opts.threads or min(os.cpu_count() or 1, 8),
        n_gpu_layers=opts.n_gpu_layers,
        type_k=opts.cache_type_k,
        type_v=opts.cache_type_v,
        fill=fill,
        log=None if as_json else progress,
        load_kwargs={k: v for k, v in opts.llama_kwargs().items() if k != "n_threads"},
    )
    if as_json:
        print(
            json.dumps(results_json(results, n_gen, n_ctx=n_ctx, depths=ds, n_prompt=n_prompt, n_gen=n_gen), indent=2)
        )
    else:
        print(markdown_table(results, n_prompt, n_gen))
    sys.stdout.flush()

"""`rlkv-edge eval`: accuracy and next-token agreement at each sparsity against no compression."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from rlkv_edge.cli.app import progress
from rlkv_edge.cli.options import (
    BatchOpt,
    CacheKOpt,
    CacheVOpt,
    CtxOpt,
    FlashAttnOpt,
    GpuOpt,
    LimitOpt,
    MaxTokensOpt,
    ModelOpt,
    ModelPathArg,
    NoMmapOpt,
    RewardOpt,
    RuntimeOptions,
    SparsitiesOpt,
    SystemOpt,
    TasksOpt,
    TextOpt,
    ThreadsOpt,
    UbatchOpt,
    need_model,
)
from rlkv_edge.errors import UsageError
from rlkv_edge.evaluate import SYSTEM_PROMPT, evaluate, render
from rlkv_edge.models import read_model


def eval_cmd(
    model: ModelPathArg = None,
    model_opt: ModelOpt = None,
    tasks: TasksOpt = None,
    text: TextOpt = None,
    sparsity: SparsitiesOpt = None,
    ctx: CtxOpt = 2048,
    max_tokens: MaxTokensOpt = 256,
    limit: LimitOpt = None,
    threads: ThreadsOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    system: SystemOpt = SYSTEM_PROMPT,
    reward: RewardOpt = None,
    chunks: Annotated[
        int | None,
        typer.Option(
            "--chunks",
            help="Score --text as llama-perplexity does: cut into --ctx-token chunks (BOS first), the second half of "
            "each scored; at most N chunks, -1 = all. Default: one --ctx prefix, every position.",
        ),
    ] = None,
    flash_attn: FlashAttnOpt = "auto",
    batch_size: BatchOpt = None,
    ubatch_size: UbatchOpt = None,
    no_mmap: NoMmapOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Accuracy and next-token agreement at each sparsity against the same model without compression."""
    if max_tokens <= 0:
        raise UsageError(f"--n-predict must be positive, got {max_tokens}")
    target = read_model(need_model(model, model_opt))
    opts = RuntimeOptions(
        ctx=ctx,
        n_gpu_layers=n_gpu_layers,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        threads=threads,
        flash_attn=flash_attn,
        n_batch=batch_size,
        n_ubatch=ubatch_size,
        mmap=not no_mmap,
    ).for_model(target)
    out = evaluate(
        target,
        tasks=tasks,
        text=text,
        sparsities=list(sparsity) if sparsity is not None else ([0.5] if target.converted else []),
        n_ctx=opts.ctx,
        max_tokens=max_tokens,
        limit=limit,
        n_threads=opts.threads,
        n_gpu_layers=opts.n_gpu_layers,
        type_k=opts.cache_type_k,
        type_v=opts.cache_type_v,
        system=system or None,
        reward=reward,
        chunks=chunks,
        log=None if as_json else progress,
        load_kwargs={k: v for k, v in opts.llama_kwargs().items() if k != "n_threads"},
    )
    print(json.dumps(out, indent=2) if as_json else render(out))
    sys.stdout.flush()

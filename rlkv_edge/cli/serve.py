"""`rlkv-edge serve`: an OpenAI-compatible API (llama-cpp-python's server) on the per-head KV runtime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rlkv_edge.cli.app import note
from rlkv_edge.cli.options import (
    BudgetOpt,
    CacheKOpt,
    CacheVOpt,
    CtxOpt,
    GpuOpt,
    ModelArg,
    RuntimeOptions,
    SinkOpt,
    SparsityOpt,
    ThreadsOpt,
    WindowOpt,
    resolve_model,
)
from rlkv_edge.errors import UsageError
from rlkv_edge.models import describe
from rlkv_edge.serve import check_server_extras, create_app, run_server


def serve(
    model: ModelArg = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    ctx: CtxOpt = 4096,
    sparsity: SparsityOpt = None,
    kv_budget: BudgetOpt = None,
    sink: SinkOpt = None,
    window: WindowOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    threads: ThreadsOpt = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Model name clients use (default: file name).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require this bearer token.")] = None,
) -> None:
    """Serve a model with an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}")
    opts = RuntimeOptions(ctx, sparsity, kv_budget, sink, window, n_gpu_layers, cache_type_k, cache_type_v, threads)
    check_server_extras()
    llm = opts.open(resolve_model(model))
    try:
        app = create_app(llm, alias=alias, api_key=api_key)
        note(f"{Path(llm.model_path).name}: {describe(llm)}")
        note(f"serving on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)")
        sys.stderr.flush()
        run_server(app, host, port)
    finally:
        llm.close()

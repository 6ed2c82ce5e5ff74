"""`rlkv-edge serve`: an OpenAI-compatible server (llama-cpp-python's) on the per-head KV runtime.

The model is loaded once by `rlkv_edge.runtime.load` (with the sparsity / KV budget / cache types of
`chat`) and handed to llama-cpp-python's FastAPI app, instead of the server building its own Llama.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rlkv_edge.chat import (
    BudgetOpt,
    CacheKOpt,
    CacheVOpt,
    CliError,
    CtxOpt,
    GpuOpt,
    ModelArg,
    SparsityOpt,
    ThreadsOpt,
    fail,
    load_for_cli,
)


def create_app(llm: Any, *, alias: str | None = None, api_key: str | None = None) -> Any:
    """llama-cpp-python's FastAPI app serving an already loaded Llama (no second load)."""
    try:
        import llama_cpp.server.app as server_app
        from llama_cpp.server.model import LlamaProxy
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise CliError(
            f"serve needs llama-cpp-python's server extras ({e.name} is missing): pip install 'rlkv-edge[serve]'"
        ) from None

    name = alias or Path(llm.model_path).name

    class _Preloaded(LlamaProxy):
        """A LlamaProxy whose one model is the Llama we loaded."""

        def __init__(self, models: list[ModelSettings]) -> None:
            self._model_settings_dict = {name: models[0]}
            self._current_model = llm
            self._current_model_alias = name
            self._default_model_settings = models[0]
            self._default_model_alias = name

        def __call__(self, model: str | None = None) -> Any:
            return llm

    settings = ModelSettings(model=str(llm.model_path), model_alias=name, n_ctx=llm.n_ctx(), verbose=False)
    server = ServerSettings(api_key=api_key)
    # create_app builds its proxy through the module-level name LlamaProxy: swap ours in meanwhile.
    original = server_app.LlamaProxy
    setattr(server_app, "LlamaProxy", _Preloaded)  # noqa: B010
    try:
        return server_app.create_app(server_settings=server, model_settings=[settings])
    finally:
        setattr(server_app, "LlamaProxy", original)  # noqa: B010


def serve(
    model: ModelArg = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    ctx: CtxOpt = 4096,
    sparsity: SparsityOpt = None,
    kv_budget: BudgetOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    threads: ThreadsOpt = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Model name clients use (default: file name).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require this bearer token.")] = None,
) -> None:
    """Serve a model with an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    if not 0 < port < 65536:
        raise fail(f"--port must be in 1..65535, got {port}")
    try:
        import uvicorn
    except ImportError:
        raise fail("serve needs llama-cpp-python's server extras: pip install 'rlkv-edge[serve]'") from None
    try:
        llm = load_for_cli(
            model,
            ctx=ctx,
            sparsity=sparsity,
            kv_budget=kv_budget,
            n_gpu_layers=n_gpu_layers,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            threads=threads,
        )
        app = create_app(llm, alias=alias, api_key=api_key)
    except CliError as e:
        raise fail(str(e)) from None
    from rlkv_edge.models import describe

    typer.echo(f"rlkv-edge: {Path(llm.model_path).name}: {describe(llm)}", err=True)
    typer.echo(f"rlkv-edge: serving on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)", err=True)
    sys.stderr.flush()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        llm.close()

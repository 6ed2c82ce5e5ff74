"""`rlkv-edge serve`: an OpenAI-compatible API on the per-head KV runtime: llama-cpp-python's server for one
request at a time, llama.cpp's llama-server for `--parallel N` slots."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rlkv_edge import _native
from rlkv_edge.cli.app import note, warn
from rlkv_edge.cli.options import (
    BatchOpt,
    BudgetOpt,
    CacheKOpt,
    CacheVOpt,
    ChatTemplateOpt,
    CtxOpt,
    FlashAttnOpt,
    GpuOpt,
    MlockOpt,
    ModelArg,
    ModelOpt,
    NoMmapOpt,
    RuntimeOptions,
    SinkOpt,
    SparsityOpt,
    ThreadsOpt,
    UbatchOpt,
    WindowOpt,
    env,
    one_model,
    resolve_model,
)
from rlkv_edge.errors import UsageError
from rlkv_edge.models import ModelFile, describe
from rlkv_edge.runtime import rlkv_overrides
from rlkv_edge.serve import check_server_extras, create_app, run_server

CHAT_UI = Path(__file__).resolve().parents[1] / "data" / "chat_ui"  # index.html, served by llama-server --path


def serve(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    host: Annotated[
        str, typer.Option("--host", envvar=env("HOST"), help="Address to bind (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, envvar=env("PORT"), help="TCP port.")] = 8000,
    ctx: CtxOpt = 4096,
    sparsity: SparsityOpt = None,
    kv_budget: BudgetOpt = None,
    sink: SinkOpt = None,
    window: WindowOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    threads: ThreadsOpt = None,
    flash_attn: FlashAttnOpt = "auto",
    batch_size: BatchOpt = None,
    ubatch_size: UbatchOpt = None,
    no_mmap: NoMmapOpt = False,
    mlock: MlockOpt = False,
    chat_template: ChatTemplateOpt = None,
    alias: Annotated[
        str | None,
        typer.Option("--alias", "-a", envvar=env("ALIAS"), help="Model name clients use (default: file name)."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar=env("API_KEY"), help="Require this bearer token.")
    ] = None,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            "-np",
            min=1,
            envvar=env("N_PARALLEL"),
            help="Slots served at once. Above 1, llama.cpp's llama-server serves them (continuous batching, one "
            "unified KV cache of --ctx cells shared by the slots; --kv-budget covers all of them).",
        ),
    ] = 1,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui",
            envvar=env("UI"),
            help="Also serve a chat page at http://HOST:PORT/ (runs llama-server, which serves the page bundled "
            "with rlkv-edge: this llama.cpp build embeds no web UI of its own).",
        ),
    ] = False,
) -> None:
    """Serve a model with an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {port}")
    if parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {parallel}")
    opts = RuntimeOptions(
        ctx, sparsity, kv_budget, sink, window, n_gpu_layers, cache_type_k, cache_type_v, threads,
        flash_attn, batch_size, ubatch_size, not no_mmap, mlock, chat_template,
    )  # fmt: skip
    path = one_model(model, model_opt)
    if parallel > 1 or ui:
        _exec_llama_server(opts, resolve_model(path), host, port, parallel, alias, api_key, ui=ui)
    check_server_extras()
    llm = opts.open(resolve_model(path))
    try:
        app = create_app(llm, alias=alias, api_key=api_key)
        note(f"{Path(llm.model_path).name}: {describe(llm)}")
        note(f"serving on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)")
        sys.stderr.flush()
        run_server(app, host, port)
    finally:
        llm.close()


def _exec_llama_server(
    opts: RuntimeOptions,
    model: ModelFile,
    host: str,
    port: int,
    parallel: int,
    alias: str | None,
    api_key: str | None,
    *,
    ui: bool = False,
) -> None:
    """Replace this process with llama-server on the same model and settings (llama.cpp's flag names)."""
    path = _native.tool_path("llama-server")
    if path is None:
        need = "--ui" if ui else "--parallel above 1"
        raise UsageError(f"{need} needs llama-server, which is not built (make install-tools)")
    if model.note:
        note(model.note)
    opts = opts.for_model(model)
    use = opts.pick(model, n_seq=parallel)
    if use.budget_line:
        note(use.budget_line)
    for line in opts.warnings(model, use, n_seq=parallel):
        warn(line)
    args = [str(path), "-m", str(model.path), "--host", host, "--port", str(port), "-c", str(opts.ctx)]
    args += ["-np", str(parallel), "-kvu", *(["--path", str(CHAT_UI)] if ui else ["--no-webui"])]
    if opts.n_gpu_layers:
        args += ["-ngl", str(opts.n_gpu_layers)]
    overrides = rlkv_overrides(use.sparsity, use.sink, use.window)  # as llama.cpp's --override-kv KEY=TYPE:VALUE
    if overrides:
        kv = [f"{k}={'float' if isinstance(v, float) else 'int'}:{v}" for k, v in overrides.items()]
        args += ["--override-kv", ",".join(kv)]
    load_mode = {(True, False): None, (False, False): "none", (True, True): "mmap+mlock", (False, True): "mlock"}
    for flag, value in (
        ("-t", opts.threads),
        ("-ctk", use.type_k),
        ("-ctv", use.type_v),
        ("-fa", opts.flash_attn if opts.flash_attn != "auto" else None),
        ("-b", opts.n_batch),
        ("-ub", opts.n_ubatch),
        ("--load-mode", load_mode[(opts.mmap, opts.mlock)]),  # llama.cpp's --no-mmap / --mlock of this version
        ("--chat-template", opts.chat_template),
    ):
        if value is not None:
            args += [flag, str(value)]
    if alias:
        args += ["--alias", alias]
    if api_key:
        args += ["--api-key", api_key]
    shown = ["<key>" if prev == "--api-key" else a for prev, a in zip(["", *args[:-1]], args, strict=True)]
    note(" ".join(["llama-server", *shown[1:]]))
    note(f"serving {parallel} slots with llama-server on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)")
    if ui:
        note(f"chat page: http://{host}:{port}/ (open it in a browser)")
    sys.stderr.flush()
    os.execv(path, args)

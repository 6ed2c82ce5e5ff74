"""`rlkv-edge chat`: an interactive REPL (or a one-shot `--prompt`) on the per-head KV runtime."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rlkv_edge.chat import ChatSession, repl
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
from rlkv_edge.models import describe


def chat(
    model: ModelArg = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Answer this one message, print it and exit.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    ctx: CtxOpt = 4096,
    sparsity: SparsityOpt = None,
    kv_budget: BudgetOpt = None,
    sink: SinkOpt = None,
    window: WindowOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (0: greedy).")] = 0.7,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (makes --prompt reproducible).")] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", "-n", help="Longest answer in tokens (default: until the context is full)."),
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Chat with a model on the per-head KV runtime (a REPL, or one answer with --prompt)."""
    opts = RuntimeOptions(ctx, sparsity, kv_budget, sink, window, n_gpu_layers, cache_type_k, cache_type_v, threads)
    llama_kwargs: dict[str, Any] = {"seed": seed} if seed is not None else {}
    llm = opts.open(resolve_model(model), **llama_kwargs)
    console = Console(highlight=False, soft_wrap=True)
    one_shot = prompt is not None
    if not one_shot:
        console.print(f"{Path(llm.model_path).name}: {describe(llm)}", style="dim", markup=False)
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    session = ChatSession(llm, console, system=system, temperature=temperature, seed=seed, max_tokens=max_tokens)
    try:
        if one_shot:
            session.ask(prompt or "")
            console.print()
            if session.last is not None and session.last.stopped:
                raise typer.Exit(130)
        else:
            repl(session)
    finally:
        llm.close()
    sys.stdout.flush()

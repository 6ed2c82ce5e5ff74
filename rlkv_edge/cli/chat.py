"""`rlkv-edge chat`: an interactive REPL (or a one-shot `--prompt`) on the per-head KV runtime; llama.cpp's flag
names and sampling options (llama-cli's)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rlkv_edge.chat import ChatSession, repl
from rlkv_edge.cli.app import progress
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
from rlkv_edge.models import describe


def chat(
    model: ModelArg = None,
    model_opt: ModelOpt = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Answer this one message, print the answer alone and exit.")
    ] = None,
    prompt_file: Annotated[
        Path | None, typer.Option("--file", "-f", help="As --prompt, with the message read from this file.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", "--system-prompt", "-sys", help="System prompt.")] = None,
    ctx: CtxOpt = 4096,
    sparsity: SparsityOpt = None,
    kv_budget: BudgetOpt = None,
    sink: SinkOpt = None,
    window: WindowOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    temperature: Annotated[
        float,
        typer.Option("--temp", "--temperature", min=0.0, envvar=env("TEMP"), help="Sampling temperature (0: greedy)."),
    ] = 0.7,
    top_k: Annotated[
        int, typer.Option("--top-k", min=0, envvar=env("TOP_K"), help="Top-k sampling (0: disabled).")
    ] = 40,
    top_p: Annotated[
        float,
        typer.Option("--top-p", min=0.0, max=1.0, envvar=env("TOP_P"), help="Top-p sampling (1.0: disabled)."),
    ] = 0.95,
    min_p: Annotated[
        float,
        typer.Option("--min-p", min=0.0, max=1.0, envvar=env("MIN_P"), help="Min-p sampling (0.0: disabled)."),
    ] = 0.05,
    repeat_penalty: Annotated[
        float,
        typer.Option(
            "--repeat-penalty",
            envvar=env("REPEAT_PENALTY"),
            help="Penalise repeated tokens (> 0; 1.0: disabled).",
        ),
    ] = 1.0,
    grammar: Annotated[
        str | None, typer.Option("--grammar", help="A GBNF grammar the answer must follow (llama.cpp's grammars/).")
    ] = None,
    grammar_file: Annotated[
        Path | None, typer.Option("--grammar-file", help="Read the GBNF grammar from a file.")
    ] = None,
    json_schema: Annotated[
        str | None,
        typer.Option("--json-schema", "-j", help='A JSON schema the answer must follow, e.g. \'{"type": "object"}\'.'),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", envvar=env("SEED"), help="Random seed (makes --prompt reproducible).")
    ] = None,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--n-predict",
            "-n",
            "--predict",
            "--max-tokens",
            min=-1,
            envvar=env("N_PREDICT"),
            help="Longest answer in tokens (-1: until the context is full).",
        ),
    ] = -1,
    threads: ThreadsOpt = None,
    flash_attn: FlashAttnOpt = "auto",
    batch_size: BatchOpt = None,
    ubatch_size: UbatchOpt = None,
    no_mmap: NoMmapOpt = False,
    mlock: MlockOpt = False,
    chat_template: ChatTemplateOpt = None,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            "--verbose",
            "-v",
            help="After each answer, one line on stderr: KV memory (full vs local cache), prompt and generation speed.",
        ),
    ] = False,
) -> None:
    """Chat with a model on the per-head KV runtime (a REPL, or one answer with -p/-f)."""
    from rlkv_edge.runtime import check_grammar
    from rlkv_edge.runtime import grammar as make_grammar

    if not repeat_penalty > 0:
        raise UsageError(f"--repeat-penalty must be > 0, got {repeat_penalty}")
    if prompt is not None and prompt_file is not None:
        raise UsageError("give --prompt or --file, not both")
    if prompt_file is not None:
        from rlkv_edge.evaluate import read_text_file

        prompt = read_text_file(prompt_file)
    opts = RuntimeOptions(
        ctx, sparsity, kv_budget, sink, window, n_gpu_layers, cache_type_k, cache_type_v, threads,
        flash_attn, batch_size, ubatch_size, not no_mmap, mlock, chat_template,
    )  # fmt: skip
    sampling: dict[str, Any] = {"top_k": top_k, "top_p": top_p, "min_p": min_p, "repeat_penalty": repeat_penalty}
    rules = make_grammar(grammar, grammar_file, json_schema)
    if rules is not None:
        sampling["grammar"] = rules
    llama_kwargs: dict[str, Any] = {"seed": seed} if seed is not None else {}
    llm = opts.open(resolve_model(one_model(model, model_opt)), **llama_kwargs)
    if rules is not None:
        try:
            check_grammar(
                llm, rules, "--json-schema" if json_schema else "--grammar-file" if grammar_file else "--grammar"
            )
        except UsageError:
            llm.close()
            raise
    console = Console(highlight=False, soft_wrap=True)
    one_shot = prompt is not None
    interactive = not one_shot and sys.stdin.isatty()
    if not one_shot:
        banner = f"{Path(llm.model_path).name}: {describe(llm)}"
        if interactive:
            console.print(banner, style="dim", markup=False)
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
        else:
            progress(banner)
    session = ChatSession(
        llm,
        console,
        system=system,
        temperature=temperature,
        seed=seed,
        max_tokens=None if max_tokens < 0 else max_tokens,
        sampling=sampling,
        on_answer=(lambda s: progress(s.answer_stats())) if stats else None,
    )
    try:
        if one_shot:
            session.ask(prompt or "")
            console.print()
            if stats:
                progress(session.answer_stats())
            if session.last is not None and session.last.stopped:
                raise typer.Exit(130)
        else:
            repl(session, interactive)
    finally:
        llm.close()
    sys.stdout.flush()

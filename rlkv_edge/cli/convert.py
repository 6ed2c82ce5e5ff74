"""`rlkv-edge convert` (re-order a GGUF's heads, add rlkv.* keys) and `rlkv-edge inspect` (read them back)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rlkv_edge.cli.options import CacheKOpt, CacheVOpt
from rlkv_edge.convert import convert_gguf
from rlkv_edge.convert.inspect import plot_scores, render_report
from rlkv_edge.errors import Interrupted
from rlkv_edge.heads import load_heads
from rlkv_edge.masks import check_sparsity
from rlkv_edge.memory import DEFAULT_UBATCH, kv_memory
from rlkv_edge.metadata import read_rlkv_info


def convert(
    model: Annotated[Path, typer.Argument(help="Input GGUF (llama, qwen2, qwen3, mistral3).", show_default=False)],
    mask: Annotated[Path, typer.Option("--mask", "-m", help="Heads file: heads.json or a DuoAttention *.tsv.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output GGUF (default: <stem>.rlkv.gguf).")
    ] = None,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", "-s", help="Default sparsity s in [0, 1] (default: 0.5).")
    ] = None,
    sink: Annotated[int | None, typer.Option("--sink", help="Sink tokens S (default: the heads file's).")] = None,
    window: Annotated[int | None, typer.Option("--window", help="Window tokens W (default: the heads file's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-convert a file that already has rlkv.* keys.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Re-order a GGUF's KV heads by score and add rlkv.* metadata (stock llama.cpp still runs it)."""
    if sparsity is not None:
        check_sparsity(sparsity, "--sparsity")
    try:
        report = convert_gguf(
            model,
            load_heads(mask),
            output,
            sparsity=sparsity,
            sink=sink,
            window=window,
            force=force,
            progress=not quiet and sys.stderr.isatty(),
        )
    except KeyboardInterrupt:
        raise Interrupted("interrupted (no output written)") from None
    if not quiet:
        typer.echo(report.summary())


def inspect(
    model: Annotated[Path, typer.Argument(help="A GGUF, converted or not.", show_default=False)],
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", "-s", help="Sparsity s (default: the file's rlkv.sparsity).")
    ] = None,
    ctx: Annotated[
        int | None,
        typer.Option("--ctx", "-c", help="Context N of the memory estimate (default: the model's)."),
    ] = None,
    type_k: CacheKOpt = None,
    type_v: CacheVOpt = None,
    ubatch: Annotated[int, typer.Option("--ubatch", help="n_ubatch (sizes the local ring).")] = DEFAULT_UBATCH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save a layer x head heat map PNG (needs matplotlib).")
    ] = None,
) -> None:
    """Show a GGUF's heads, full heads per layer and the KV memory with and without compression."""
    info = read_rlkv_info(model)
    stored = info.get("sparsity") if info["converted"] else 0.0
    s = check_sparsity(
        sparsity if sparsity is not None else stored, "--sparsity" if sparsity is not None else "rlkv.sparsity"
    )
    n_ctx = ctx if ctx is not None else (info.get("context_length") or 4096)
    memory = kv_memory(info, s, n_ctx, type_k or "f16", type_v or "f16", ubatch)
    if plot is not None:
        plot_scores(info, plot, s)
    if as_json:
        typer.echo(json.dumps({**info, "memory": memory}))
    else:
        typer.echo(render_report(info, memory, plot))

"""Typer commands `rlkv-edge convert` and `rlkv-edge inspect` (registered by rlkv_edge/cli.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rlkv_edge.heads import HeadsFileError, load_heads

from .converter import convert_gguf
from .inspect import DEFAULT_UBATCH, kv_memory, plot_scores, read_rlkv_info
from .model import ConvertError


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    line = " ".join(str(message).split())
    typer.echo(f"rlkv-edge: error: {line}", err=True)
    return typer.Exit(code)


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
    try:
        if sparsity is not None and not 0.0 <= sparsity <= 1.0:
            raise ConvertError(f"--sparsity must be in [0, 1], got {sparsity}")
        heads = load_heads(mask)
        report = convert_gguf(
            model,
            heads,
            output,
            sparsity=sparsity,
            sink=sink,
            window=window,
            force=force,
            progress=not quiet and sys.stderr.isatty(),
            heads_path=str(mask),
        )
    except (ConvertError, HeadsFileError) as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    if not quiet:
        typer.echo(report.summary())


def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="A GGUF, converted or not.", show_default=False)],
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", "-s", help="Sparsity s (default: the file's rlkv.sparsity).")
    ] = None,
    ctx: Annotated[
        int | None,
        typer.Option("--ctx", "-c", help="Context N of the memory estimate (default: the model's)."),
    ] = None,
    type_k: Annotated[str, typer.Option("--cache-type-k", help="KV cache type of K.")] = "f16",
    type_v: Annotated[str, typer.Option("--cache-type-v", help="KV cache type of V.")] = "f16",
    ubatch: Annotated[int, typer.Option("--ubatch", help="n_ubatch (sizes the local ring).")] = DEFAULT_UBATCH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save a layer x head heat map PNG (needs matplotlib).")
    ] = None,
) -> None:
    """Show a GGUF's heads, full heads per layer and the KV memory with and without compression."""
    try:
        info = read_rlkv_info(model)
        s = sparsity if sparsity is not None else (info.get("sparsity") if info["converted"] else 0.0)
        if s is None or not 0.0 <= s <= 1.0:
            raise ConvertError(f"--sparsity must be in [0, 1], got {s}")
        n_ctx = ctx if ctx is not None else (info.get("context_length") or 4096)
        memory = kv_memory(info, s, n_ctx, type_k, type_v, ubatch)
        if plot is not None:
            plot_scores(info, plot, s)
    except ConvertError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps({**info, "memory": memory}))
    else:
        typer.echo(_render(info, memory, plot))


inspect = inspect_cmd


def _mib(n: float) -> str:
    """Bytes as MiB text."""
    return f"{n / 2**20:,.1f} MiB"


def _render(info: dict[str, Any], mem: dict[str, Any], plot: Path | None) -> str:
    """Human-readable report."""
    lines = [
        f"file          {info['path']}",
        f"architecture  {info['architecture']}",
        f"heads         {info['n_layer']} layers x {info['n_head_kv']} KV heads "
        f"({info['n_head']} query heads, head dim {info['head_dim_k']}/{info['head_dim_v']})",
    ]
    if not info["converted"]:
        lines.append("rlkv          none (not converted: every head is full)")
    else:
        lines += [
            f"rlkv          version {info['rlkv_version']}, S = {info['sink_size']}, "
            f"W = {info['window_size']}, stored s = {info['sparsity']:g}",
            f"source        {info['source']}",
        ]
    f_l = mem["full_heads_per_layer"]
    n_heads = info["n_layer"] * info["n_head_kv"]
    lines += [
        f"sparsity      {mem['sparsity']:g}: {mem['n_full']} of {n_heads} heads full",
        "F_l           " + " ".join(str(f) for f in f_l),
        *([f"tie           {mem['tie']}"] if mem.get("tie") else []),
        f"KV @ {mem['n_ctx']:<8} {_mib(mem['kv_bytes_uncompressed'])} uncompressed -> "
        f"{_mib(mem['kv_bytes_compressed'])} with rlkv ({mem['ratio']:.1%}; full cache "
        f"{_mib(mem['kv_bytes_full_cache'])}, local ring of {mem['ring_cells']} cells "
        f"{_mib(mem['kv_bytes_local_cache'])})",
        f"assumes       {mem['assumption']}",
    ]
    if plot is not None:
        lines.append(f"plot          {plot}")
    return "\n".join(lines)

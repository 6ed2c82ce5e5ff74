"""`rlkv-edge convert` (re-order a GGUF's heads, add rlkv.* keys), `rlkv-edge inspect` (read them back) and
`rlkv-edge export` (a heads file as a DuoAttention / RLKV head pattern)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from rlkv_edge.cli.app import progress
from rlkv_edge.cli.options import (
    CacheKOpt,
    CacheVOpt,
    ModelOpt,
    PatternFormat,
    ThreadsOpt,
    check_plot_path,
    need_model,
    plain_model_path,
)
from rlkv_edge.convert import convert_gguf
from rlkv_edge.convert.inspect import plot_scores, render_report
from rlkv_edge.errors import Interrupted, UsageError
from rlkv_edge.evaluate import read_text_file, text_tokens
from rlkv_edge.frontier import calibrate as calibrate_model
from rlkv_edge.heads import HeadScores, export_pattern, load_heads
from rlkv_edge.masks import check_sparsity
from rlkv_edge.memory import DEFAULT_UBATCH, kv_memory
from rlkv_edge.metadata import read_rlkv_info
from rlkv_edge.models import read_model


def convert(
    model: Annotated[
        Path | None,
        typer.Argument(help="Input GGUF (llama, qwen2, qwen3, mistral3), or give it with -m.", show_default=False),
    ] = None,
    model_opt: ModelOpt = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", help="Heads file: heads.json or a DuoAttention / RLKV *.tsv.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Output GGUF (default: <stem>.rlkv.gguf).")
    ] = None,
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", "-s", help="Default sparsity s in [0, 1] (default: 0.5).")
    ] = None,
    sink: Annotated[int | None, typer.Option("--sink", help="Sink tokens S (default: the heads file's).")] = None,
    window: Annotated[int | None, typer.Option("--window", help="Window tokens W (default: the heads file's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-convert a file that already has rlkv.* keys.")] = False,
    calibrate: Annotated[
        Path | None,
        typer.Option(
            "--calibrate",
            help="A UTF-8 text: measure KL and top-1 on it for every K/V cache type pair (f16, q8_0, q8_0/q4_0, "
            "q4_0) x sparsity x sink/window of the calibration grid and store them in the GGUF (rlkv.calibration); "
            "--kv-budget then picks the best point that fits. Minutes on a CPU.",
        ),
    ] = None,
    calibrate_tokens: Annotated[
        int,
        typer.Option(
            "--calibrate-tokens",
            help="Tokens of the --calibrate text to use. Calibrate near the context you will run: a short "
            "calibration undervalues the window at long contexts (--kv-budget warns past twice its length).",
        ),
    ] = 1024,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Re-order a GGUF's KV heads by score and add rlkv.* metadata (stock llama.cpp still runs it)."""
    model, mask = _convert_inputs(model, model_opt, mask)
    if sparsity is not None:
        check_sparsity(sparsity, "--sparsity")
    if calibrate is not None:
        if calibrate_tokens < 16:
            raise UsageError(f"--calibrate-tokens must be at least 16, got {calibrate_tokens}")
        read_text_file(calibrate)  # a bad text fails before anything is written
    heads = load_heads(mask)
    show = not quiet and sys.stderr.isatty()
    kwargs: dict[str, Any] = dict(sparsity=sparsity, sink=sink, window=window, force=force)
    try:
        calibration = None
        if calibrate is not None:
            calibration = _calibration(model, heads, calibrate, calibrate_tokens, threads, quiet, kwargs)
        report = convert_gguf(model, heads, output, progress=show, calibration=calibration, **kwargs)
    except KeyboardInterrupt:
        raise Interrupted("interrupted (no output written)") from None
    if not quiet:
        typer.echo(report.summary())


def _convert_inputs(model: Path | None, model_opt: Path | None, mask: Path | None) -> tuple[Path, Path]:
    """(GGUF, heads file) from MODEL / -m and --mask; -m is the model as in llama.cpp (it meant --mask before 0.2),
    so a heads file given with -m, or a GGUF given with --mask, is refused with the right spelling."""
    for flag, path in (("-m/--model", model_opt), ("MODEL", model)):
        if path is not None and _looks_like_heads(path):
            raise UsageError(
                f"{flag} {path} looks like a heads file: -m now means the model (as in llama.cpp); "
                f"give the heads file with --mask, e.g. convert model.gguf --mask {path}"
            )
    if mask is not None and mask.suffix.lower() == ".gguf":
        raise UsageError(f"--mask {mask} is a GGUF: give the model first or with -m, and the heads file with --mask")
    path = plain_model_path(need_model(model, model_opt))  # a catalog name: its plain GGUF, fetched on first use
    if mask is None:
        raise UsageError("missing --mask HEADS: a heads.json (rlkv-edge train) or a DuoAttention / RLKV *.tsv")
    return path, mask


def _looks_like_heads(path: Path) -> bool:
    """A heads file by its name (.json, .tsv, .csv) or a folder holding one."""
    return path.suffix.lower() in (".json", ".tsv", ".csv") or path.is_dir()


def _calibration(
    model: Path, heads: HeadScores, text: Path, n_tokens: int, threads: int | None, quiet: bool, kwargs: dict[str, Any]
) -> str:
    """Convert into a temporary file, measure the calibration grid on it, return the rlkv.calibration string."""
    with tempfile.TemporaryDirectory(prefix="rlkv-calibrate-") as tmp:
        probe = convert_gguf(model, heads, Path(tmp) / "calibrate.rlkv.gguf", progress=False, **kwargs)
        converted = read_model(probe.dst)
        tokens = text_tokens(converted, text, n_tokens)
        if not quiet:
            progress(f"calibrating on {len(tokens)} tokens of {text.name}")
        cal = calibrate_model(
            probe.dst,
            tokens,
            sink=probe.sink_size,
            window=probe.window_size,
            text_name=text.name,
            n_threads=threads,
            log=None if quiet else progress,
        )
    return cal.to_json()


def inspect(
    model: Annotated[Path, typer.Argument(help="A GGUF, converted or not.", show_default=False)],
    sparsity: Annotated[
        float | None, typer.Option("--sparsity", "-s", help="Sparsity s (default: the file's rlkv.sparsity).")
    ] = None,
    ctx: Annotated[
        int | None,
        typer.Option(
            "--ctx-size", "-c", "--ctx", min=1, help="Context N of the memory estimate (default: the model's)."
        ),
    ] = None,
    type_k: CacheKOpt = None,
    type_v: CacheVOpt = None,
    ubatch: Annotated[
        int, typer.Option("--ubatch-size", "-ub", "--ubatch", min=1, help="n_ubatch (sizes the local ring).")
    ] = DEFAULT_UBATCH,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Save a layer x head heat map PNG (needs matplotlib).")
    ] = None,
) -> None:
    """Show a GGUF's heads, full heads per layer and the KV memory with and without compression."""
    if plot is not None:
        check_plot_path(plot)
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


def export(
    heads_file: Annotated[
        Path, typer.Argument(help="A heads file: heads.json (rlkv-edge train) or a DuoAttention / RLKV *.tsv.")
    ],
    fmt: Annotated[
        PatternFormat,
        typer.Option(
            "--format",
            "-F",
            case_sensitive=False,
            help="duoattention: full_attention_heads.tsv + config.json (DuoAttention's loaders); rlkv: "
            "adapter_weights.tsv + config.json (RLKV's released gates).",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="A folder (created) or a *.tsv path; config.json goes beside it.")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace a config.json that says something else.")] = False,
) -> None:
    """Write a heads file as a DuoAttention or RLKV head pattern, for the servers that read those (the exact
    inverse of the import: convert --mask on the result gives the same ranking)."""
    for path in export_pattern(load_heads(heads_file), fmt, output, force=force):
        typer.echo(str(path))

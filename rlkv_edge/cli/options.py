"""What the commands share: option types (llama.cpp's flag names), `RuntimeOptions` validated once, and
finding the model (the bundled SmolLM2 is converted once with the default heads and cached)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from rlkv_edge.calibration import choose_config
from rlkv_edge.cli.app import note
from rlkv_edge.errors import UsageError
from rlkv_edge.masks import check_sparsity
from rlkv_edge.memory import choose_sparsity, parse_size
from rlkv_edge.models import (
    ModelFile,
    bundled_model_path,
    cache_dir,
    default_heads_path,
    open_model,
    read_model,
    require_compression,
)

ModelArg = Annotated[
    Path | None,
    typer.Argument(help="GGUF model (default: the bundled SmolLM2-135M-Instruct).", show_default=False),
]
ModelPathArg = Annotated[Path, typer.Argument(help="GGUF model.", show_default=False)]
CtxOpt = Annotated[int, typer.Option("--ctx", "-c", help="Context length n_ctx in tokens.")]
SparsityOpt = Annotated[
    float | None,
    typer.Option("--sparsity", "-s", help="Share of heads that keep only sinks + window (default: the file's)."),
]
SparsitiesOpt = Annotated[
    list[float] | None,
    typer.Option("--sparsity", "-s", help="Sparsity to measure (repeatable; default 0.5 if the file is converted)."),
]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--kv-budget",
        help="Fit the KV cache in this size, e.g. 64MiB: the lowest-KL point of the model's calibration (convert "
        "--calibrate) that fits, choosing cache types, sparsity, S and W; without one, the smallest sparsity.",
    ),
]
SinkOpt = Annotated[int | None, typer.Option("--sink", help="Sink tokens S of local heads (default: the file's).")]
WindowOpt = Annotated[
    int | None, typer.Option("--window", help="Window tokens W of local heads (default: the file's).")
]
GpuOpt = Annotated[int, typer.Option("--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1: all).")]
CacheKOpt = Annotated[str | None, typer.Option("--cache-type-k", "-ctk", help="K cache type: f16, q8_0, q4_0, ...")]
CacheVOpt = Annotated[str | None, typer.Option("--cache-type-v", "-ctv", help="V cache type: f16, q8_0, q4_0, ...")]
TasksOpt = Annotated[
    str | None,
    typer.Option("--tasks", help="FILE.jsonl (prompt, answer per line) or reasoning-gym:NAME."),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use at most this many tasks.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", "-n", help="Longest answer per task.")]
SystemOpt = Annotated[
    str,
    typer.Option("--system", help="System prompt for --tasks ('' sends the task prompt alone)."),
]
RewardOpt = Annotated[
    str | None,
    typer.Option(
        "--reward",
        help="Score the whole answer with a training reward: exact, math or module:function "
        "(default: the final answer line against 'answer').",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: up to 8).")]


@dataclass(frozen=True)
class LoadSettings:
    """What a model is loaded with once --kv-budget is resolved (None: the file's own value / llama.cpp's default)."""

    sparsity: float | None
    sink: int | None
    window: int | None
    type_k: str | None
    type_v: str | None
    budget_line: str | None = None  # the one line explaining a --kv-budget choice


@dataclass(frozen=True)
class RuntimeOptions:
    """How a command opens a model (chat, serve, bench, eval); every value is checked once, here."""

    ctx: int = 4096
    sparsity: float | None = None
    kv_budget: str | None = None
    sink: int | None = None
    window: int | None = None
    n_gpu_layers: int = 0
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        """Refuse bad values with a UsageError naming the flag."""
        from rlkv_edge.runtime import cache_type

        if self.ctx <= 0:
            raise UsageError(f"--ctx must be positive, got {self.ctx}")
        if self.sparsity is not None:
            check_sparsity(self.sparsity, "--sparsity")
        if self.kv_budget is not None:
            if self.sparsity is not None:
                raise UsageError("give either --sparsity or --kv-budget, not both")
            parse_size(self.kv_budget)
        if self.sink is not None and self.sink < 0:
            raise UsageError(f"--sink must be >= 0, got {self.sink}")
        if self.window is not None and self.window < 1:
            raise UsageError(f"--window must be >= 1, got {self.window}")
        if self.n_gpu_layers < -1:
            raise UsageError(f"--n-gpu-layers must be >= -1, got {self.n_gpu_layers}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        cache_type(self.cache_type_k, "--cache-type-k")
        cache_type(self.cache_type_v, "--cache-type-v")

    def pick(self, model: ModelFile, n_seq: int = 1) -> LoadSettings:
        """What to load with: these options, or, with --kv-budget, the configuration chosen for it (the budget
        covers n_seq sequences sharing one unified cache of --ctx cells). With a stored calibration (convert
        --calibrate) the choice is the lowest-KL calibrated point that fits, else the smallest sparsity."""
        given = LoadSettings(self.sparsity, self.sink, self.window, self.cache_type_k, self.cache_type_v)
        if self.kv_budget is None:
            return given
        require_compression(model, "--kv-budget")
        budget = parse_size(self.kv_budget)
        if model.calibration is not None:
            choice = choose_config(
                model.info,
                model.calibration,
                budget,
                self.ctx,
                type_k=self.cache_type_k,
                type_v=self.cache_type_v,
                sink=self.sink,
                window=self.window,
                n_seq=n_seq,
            )
        else:
            choice = choose_sparsity(
                model.info,
                budget,
                self.ctx,
                type_k=self.cache_type_k or "f16",
                type_v=self.cache_type_v or "f16",
                n_seq=n_seq,
                sink=self.sink,
                window=self.window,
            )
        # both choices carry the S and W to load with (choose_sparsity: the given ones); the cache types come from
        # a calibrated choice only, so that without one an unset type stays llama.cpp's default
        return LoadSettings(
            choice.sparsity,
            choice.sink,
            choice.window,
            choice.type_k if choice.mean_kl is not None else self.cache_type_k,
            choice.type_v if choice.mean_kl is not None else self.cache_type_v,
            choice.describe(),
        )

    def open(self, model: ModelFile, *, quiet: bool = False, **llama_kwargs: Any) -> Any:
        """Load `model` with these options (notes about the model and a budget choice go to stderr)."""
        if model.note and not quiet:
            note(model.note)
        use = self.pick(model)
        if use.budget_line and not quiet:
            note(use.budget_line)
        if self.threads is not None:
            llama_kwargs["n_threads"] = self.threads
        return open_model(
            model,
            n_ctx=self.ctx,
            sparsity=use.sparsity,
            sink=use.sink,
            window=use.window,
            n_gpu_layers=self.n_gpu_layers,
            type_k=use.type_k,
            type_v=use.type_v,
            **llama_kwargs,
        )


def default_model(*, quiet: bool = False) -> ModelFile:
    """The bundled SmolLM2 converted with the default heads file (converted once, cached), or the plain file."""
    src = bundled_model_path()
    heads_file = default_heads_path()
    if heads_file is None:
        return read_model(
            src,
            "no default heads file in this build (rlkv_edge/data/default_heads.json): using the "
            "unconverted bundled SmolLM2, without KV compression",
        )
    digest = hashlib.sha256(heads_file.read_bytes()).hexdigest()[:12]
    dst = cache_dir() / "models" / f"{src.stem}.{digest}.rlkv.gguf"
    if not dst.is_file():
        from rlkv_edge.convert import convert_gguf
        from rlkv_edge.heads import load_heads

        if not quiet:
            note(f"converting the bundled model once into {dst}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(src, load_heads(heads_file), dst, progress=False, heads_path=str(heads_file))
    return read_model(dst)


def resolve_model(model: str | os.PathLike[str] | None, *, quiet: bool = False) -> ModelFile:
    """MODEL as given (its header read once), or the default model when None."""
    return default_model(quiet=quiet) if model is None else read_model(model)

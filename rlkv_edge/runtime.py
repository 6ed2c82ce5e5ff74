"""llama-cpp-python glue for the per-head KV runtime: load a model with rlkv overrides, read back what
the patched llama.cpp decided (F_l per layer) and how many bytes each KV cache holds."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rlkv_edge  # noqa: F401  (sets LLAMA_CPP_LIB_PATH before llama_cpp loads)
from rlkv_edge._native import llama_lib
from rlkv_edge.errors import ModelError, RlkvError, UsageError
from rlkv_edge.masks import check_sparsity

KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}


def cache_type(name: str | int | None, option: str = "cache type") -> int | None:
    """The ggml type id of a KV cache type given by name (f16, q8_0, ...); UsageError if unknown."""
    if name is None or isinstance(name, int):
        return name
    if name.lower() not in KV_TYPES:
        raise UsageError(f"{option} {name}: unknown type (one of {', '.join(KV_TYPES)})")
    return KV_TYPES[name.lower()]


class _ModelInfo(ctypes.Structure):
    _fields_ = [
        ("enabled", ctypes.c_int32),
        ("n_layer", ctypes.c_int32),
        ("n_head", ctypes.c_int32),
        ("n_head_kv", ctypes.c_int32),
        ("sink_size", ctypes.c_int32),
        ("window_size", ctypes.c_int32),
        ("sparsity", ctypes.c_float),
        ("n_full_total", ctypes.c_int32),
    ]


@dataclass
class RlkvInfo:
    """What the runtime derived from a model's rlkv.* metadata (after overrides)."""

    enabled: bool
    n_layer: int
    n_head: int
    n_head_kv: int
    sink_size: int
    window_size: int
    sparsity: float
    n_full_per_layer: list[int] = field(default_factory=list)

    @property
    def n_full_total(self) -> int:
        """Number of full KV heads over all layers."""
        return sum(self.n_full_per_layer)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the llama_rlkv_* signatures of native/rlkv/llama-rlkv.h (once per library)."""
    if getattr(lib, "_rlkv_bound", False):
        return lib
    lib.llama_rlkv_info.restype = ctypes.c_int32
    lib.llama_rlkv_info.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(_ModelInfo),
        ctypes.POINTER(ctypes.c_int32),
        ctypes.c_int32,
    ]
    lib.llama_rlkv_kv_bytes.restype = ctypes.c_bool
    lib.llama_rlkv_kv_bytes.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(ctypes.c_uint64),
    ]
    lib.llama_rlkv_kv_cells.restype = ctypes.c_bool
    lib.llama_rlkv_kv_cells.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.c_uint32),
    ]
    lib.llama_rlkv_n_full_heads.restype = ctypes.c_int32
    lib.llama_rlkv_n_full_heads.argtypes = [
        ctypes.c_float,
        ctypes.POINTER(ctypes.c_float),
        ctypes.c_int32,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int8),
    ]
    lib.llama_rlkv_fill_seq.restype = ctypes.c_int32
    lib.llama_rlkv_fill_seq.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32]
    lib.llama_rlkv_grouped_decode.restype = ctypes.c_bool
    lib.llama_rlkv_grouped_decode.argtypes = []
    lib.llama_rlkv_grouped_decode_runs.restype = ctypes.c_uint64
    lib.llama_rlkv_grouped_decode_runs.argtypes = []
    lib._rlkv_bound = True  # type: ignore[attr-defined]
    return lib


def native() -> ctypes.CDLL:
    """The loaded libllama with the llama_rlkv_* functions declared."""
    return _bind(llama_lib())


_LOG_ERROR = 4  # ggml_log_level GGML_LOG_LEVEL_ERROR (ggml.h of our llama.cpp)


_capturing: list[list[tuple[int, str]]] = []  # the lists of the _captured_log blocks now open, outermost first


@contextlib.contextmanager
def _captured_log() -> Iterator[list[tuple[int, str]]]:
    """Collect llama.cpp's and ggml's log lines (level, text) through llama_log_set while loading.

    llama-cpp-python silences fd 2 while it loads, so reading stderr would lose the reason of a refusal.
    Blocks nest (each open block gets every line); its own callback is put back when the outermost closes.
    """
    import llama_cpp
    from llama_cpp import _logger

    global _collect
    if _collect is None:
        _collect = llama_cpp.llama_log_callback(_collect_lines)
    lines: list[tuple[int, str]] = []
    if not _capturing:
        llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    _capturing.append(lines)
    try:
        yield lines
    finally:
        _capturing.remove(lines)
        if not _capturing:
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _collect_lines(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """The log callback of _captured_log: the line goes to every open block."""
    line = (level, text.decode("utf-8", errors="replace"))
    for lines in _capturing:
        lines.append(line)


_collect: Any = None  # the ctypes callback object (made on first use: llama_cpp is imported lazily), kept alive


def load_error(lines: list[tuple[int, str]]) -> str:
    """The reason a load failed, in one line: rlkv's own refusal, gguf's reason for a damaged file (worded
    as `rlkv_edge.metadata.read_header` words it), else the first error llama.cpp logged."""
    errors = [t.strip() for level, t in lines if level == _LOG_ERROR and t.strip()]
    for t in errors:
        if "rlkv:" in t:
            return t[t.index("rlkv:") :]
    for t in errors:  # gguf's own reason comes first: "gguf_init_from_file_impl: <reason>"
        if t.startswith("gguf_"):
            return f"damaged or truncated GGUF ({t.split(': ', 1)[-1]})"
    for t in errors:
        if "error loading model:" in t:
            reason = t.split("error loading model:", 1)[1].strip().removeprefix("error loading model hyperparameters: ")
            return f"damaged or truncated GGUF ({reason})" if "not within the file bounds" in reason else reason
    if errors:  # e.g. llama_init_from_model: K cache type q8_0 with block size 32 does not divide ...
        return errors[-1].split(": ", 1)[-1]
    return "llama.cpp could not load it"


def rlkv_overrides(sparsity: float | None, sink: int | None, window: int | None) -> dict[str, float | int]:
    """The rlkv.* metadata overrides for the values given (None: the file's own)."""
    out: dict[str, float | int] = {}
    if sparsity is not None:
        out["rlkv.sparsity"] = float(sparsity)
    if sink is not None:
        out["rlkv.sink_size"] = int(sink)
    if window is not None:
        out["rlkv.window_size"] = int(window)
    return out


def load(
    path: str | os.PathLike[str],
    *,
    n_ctx: int,
    sparsity: float | None = None,
    sink: int | None = None,
    window: int | None = None,
    n_gpu_layers: int = 0,
    type_k: str | int | None = None,
    type_v: str | int | None = None,
    flash_attn: bool | None = None,
    **llama_kwargs: Any,
) -> Any:
    """Load a GGUF with the per-head KV runtime; sparsity/sink/window override the file's rlkv.* keys.

    flash_attn=None turns flash attention on (llama.cpp's own default where supported; without it the
    transposed V cache is padded to the widest layer and most V savings are lost).
    """
    import llama_cpp

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if sparsity is not None:
        check_sparsity(sparsity)
    for name, value in (("sink", sink), ("window", window)):
        if value is not None and value < 0:
            raise UsageError(f"{name} must be >= 0, got {value}")
    overrides: dict[str, bool | int | float | str] = dict(llama_kwargs.pop("kv_overrides", None) or {})
    overrides.update(rlkv_overrides(sparsity, sink, window))
    kwargs: dict[str, Any] = {"n_threads": min(os.cpu_count() or 1, 8), "verbose": False, **llama_kwargs}
    kwargs["type_k"] = cache_type(type_k, "--cache-type-k")
    kwargs["type_v"] = cache_type(type_v, "--cache-type-v")

    with _captured_log() as log:
        try:
            llm = llama_cpp.Llama(
                str(path),
                n_ctx=n_ctx,
                n_gpu_layers=n_gpu_layers,
                flash_attn=True if flash_attn is None else flash_attn,
                kv_overrides=overrides or None,
                **kwargs,
            )
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: {load_error(log)}") from e
    if (sparsity is not None or sink is not None or window is not None) and not info(llm).enabled:
        llm.close()
        raise ModelError(f"{path} has no rlkv metadata; run `rlkv-edge convert` on it first")
    return llm


def info(llm: Any) -> RlkvInfo:
    """The rlkv settings the runtime uses for a loaded model (F_l per layer, S, W, s)."""
    lib = native()
    out = _ModelInfo()
    n_layer = lib.llama_rlkv_info(llm._model.model, ctypes.byref(out), None, 0)
    per_layer = (ctypes.c_int32 * max(n_layer, 1))()
    lib.llama_rlkv_info(llm._model.model, ctypes.byref(out), per_layer, n_layer)
    return RlkvInfo(
        enabled=bool(out.enabled),
        n_layer=out.n_layer,
        n_head=out.n_head,
        n_head_kv=out.n_head_kv,
        sink_size=out.sink_size,
        window_size=out.window_size,
        sparsity=float(out.sparsity),
        n_full_per_layer=list(per_layer[:n_layer]),
    )


def kv_bytes(llm: Any) -> tuple[int, int]:
    """Bytes of the full and of the local (sink + window) KV cache of a loaded model's context."""
    full, local = ctypes.c_uint64(0), ctypes.c_uint64(0)
    if not native().llama_rlkv_kv_bytes(llm._ctx.ctx, ctypes.byref(full), ctypes.byref(local)):
        raise ModelError("this context has no KV cache")
    return int(full.value), int(local.value)


def kv_cells(llm: Any) -> tuple[int, int]:
    """Cells of the full and of the local KV cache (0 for a cache that does not exist)."""
    full, local = ctypes.c_uint32(0), ctypes.c_uint32(0)
    if not native().llama_rlkv_kv_cells(llm._ctx.ctx, ctypes.byref(full), ctypes.byref(local)):
        raise ModelError("this context has no KV cache")
    return int(full.value), int(local.value)


def fill_seq(llm: Any, n_tokens: int, seq_id: int = 0) -> None:
    """Append n_tokens positions to a sequence without computing them (benchmarks: speed at depth, not quality)."""
    rc = native().llama_rlkv_fill_seq(llm._ctx.ctx, seq_id, n_tokens)
    if rc != 0:
        what = {
            1: "they pass the context (n_ctx) or the KV cache has no room",
            -2: "a ubatch could not be applied",
        }.get(rc, "invalid input")
        raise RlkvError(f"could not fill sequence {seq_id} with {n_tokens} positions: {what}")


def grouped_decode() -> bool:
    """Whether decoded tokens read each K/V row of a CPU cache once per GQA group (native/rlkv/rlkv-decode.h);
    False on x86-64 without AVX2/FMA, on CPUs other than x86-64 and aarch64, or with RLKV_DECODE_ATTN=0 in the
    environment. The upstream cache (no rlkv metadata, s = 0) takes that path only with RLKV_DECODE_ATTN=force."""
    return bool(native().llama_rlkv_grouped_decode())


def grouped_decode_runs() -> int:
    """Attention nodes computed on the grouped decode path so far in this process (which kernel ran)."""
    return int(native().llama_rlkv_grouped_decode_runs())


def full_head_mask_native(scores: Any, sparsity: float) -> tuple[int, Any]:
    """The C++ mask rule (llama_rlkv_n_full_heads): (k_full, bool [L, H] mask); k_full = -1 on bad input."""
    import numpy as np

    arr = np.ascontiguousarray(scores, dtype=np.float32)
    n_layer, n_head_kv = arr.shape
    mask = np.zeros(n_layer * n_head_kv, dtype=np.int8)
    k = native().llama_rlkv_n_full_heads(
        sparsity,
        arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
        n_layer,
        n_head_kv,
        None,
        mask.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
    )
    return int(k), mask.reshape(n_layer, n_head_kv).astype(bool)


def chat_formats() -> list[str]:
    """The chat format names llama-cpp-python knows (what --chat-template accepts besides a Jinja template)."""
    from llama_cpp import llama_chat_format

    return sorted(llama_chat_format.LlamaChatCompletionHandlerRegistry()._chat_handlers)


def set_chat_template(llm: Any, template: str) -> None:
    """llama.cpp's --chat-template on a loaded model: a known chat format name, else a Jinja template."""
    from llama_cpp import llama_chat_format

    if template in chat_formats():
        llm.chat_format, llm.chat_handler = template, None
        return
    if "{%" not in template and "{{" not in template:
        known = ", ".join(chat_formats())
        raise UsageError(f"--chat-template '{template}': neither a chat format name ({known}) nor a Jinja template")
    import jinja2

    eos, bos = llm.token_eos(), llm.token_bos()
    try:
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos >= 0 else "",
            bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
            stop_token_ids=[eos] if eos >= 0 else None,
        )
    except jinja2.TemplateError as e:
        raise UsageError(f"--chat-template: not a valid Jinja template ({e})") from None
    llm.chat_handler = formatter.to_chat_handler()


def grammar(text: str | None = None, path: Path | None = None, json_schema: str | None = None) -> Any:
    """llama.cpp's --grammar / --grammar-file / --json-schema as a llama-cpp-python LlamaGrammar (None: none)."""
    given = [flag for flag, v in (("--grammar", text), ("--grammar-file", path), ("--json-schema", json_schema)) if v]
    if len(given) > 1:
        raise UsageError(f"give one of {', '.join(given)}, not several")
    if not given:
        return None
    from llama_cpp import LlamaGrammar

    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--grammar-file {path}: cannot read it ({e})") from None
    if json_schema is not None:
        import json

        try:
            json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise UsageError(f"--json-schema: not valid JSON ({e.msg} at column {e.colno})") from None
        try:
            return LlamaGrammar.from_json_schema(json_schema, verbose=False)
        except Exception as e:  # the schema converter's own refusal (unsupported keyword, bad $ref, ...)
            raise UsageError(f"--json-schema: cannot turn it into a grammar ({e})") from None
    if not (text or "").strip() or "root" not in (text or ""):
        raise UsageError(f"{given[0]}: a GBNF grammar needs a 'root ::= ...' rule")
    return LlamaGrammar.from_string(text or "", verbose=False)


def check_grammar(llm: Any, rules: Any, flag: str = "--grammar") -> None:
    """UsageError unless llama.cpp's grammar parser accepts `rules` (a LlamaGrammar) for this model's vocabulary;
    llama-cpp-python would otherwise pass the parser's NULL sampler on and crash."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # the parser prints its reason over several lines
        sampler = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, rules._grammar.encode("utf-8"), rules._root.encode("utf-8")
        )
    if not sampler:
        raise UsageError(f"{flag}: llama.cpp's grammar parser refused it (not valid GBNF, or no 'root' rule)")
    llama_cpp.llama_sampler_free(sampler)

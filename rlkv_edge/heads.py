"""The heads file (docs/DESIGN.md §3): one importance score per layer × KV head.

Reads and writes ``heads.json`` (validated against a JSON schema), imports DuoAttention / RLKV pattern
files (``*.tsv``, optionally with a ``config.json`` beside them) and exports TSV.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlkv_edge.atomic import atomic_write_text
from rlkv_edge.errors import HeadsFileError

FORMAT_NAME = "rlkv-heads"
FORMAT_VERSION = 1
DEFAULT_SINK_SIZE = 64
DEFAULT_WINDOW_SIZE = 256

HEADS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "rlkv-edge heads file",
    "type": "object",
    "required": ["format", "version", "scores"],
    "properties": {
        "format": {"const": FORMAT_NAME},
        "version": {"const": FORMAT_VERSION},
        "model": {
            "type": "object",
            "properties": {
                "architecture": {"type": ["string", "null"]},
                "n_layer": {"type": ["integer", "null"], "minimum": 1},
                "n_head": {"type": ["integer", "null"], "minimum": 1},
                "n_head_kv": {"type": ["integer", "null"], "minimum": 1},
                "name": {"type": ["string", "null"]},
                "fingerprint": {"type": ["string", "null"]},
            },
        },
        "scores": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "array", "minItems": 1, "items": {"type": ["number", "null"]}},
        },
        "sink_size": {"type": "integer", "minimum": 0},
        "window_size": {"type": "integer", "minimum": 1},
        "method": {"type": "string"},
        "training": {"type": "object"},
    },
}


@dataclass
class HeadScores:
    """Per-head scores in the model's original head order, plus the S/W they were trained with."""

    scores: np.ndarray
    sink_size: int = DEFAULT_SINK_SIZE
    window_size: int = DEFAULT_WINDOW_SIZE
    method: str = "unknown"
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    source_file: Path | None = field(default=None, compare=False)  # the file it was read from, if any

    def __post_init__(self) -> None:
        """Validate and normalise the scores to a clipped float32 [L, H] array."""
        self.scores = check_scores(self.scores)

    @property
    def n_layer(self) -> int:
        """Number of layers L."""
        return int(self.scores.shape[0])

    @property
    def n_head_kv(self) -> int:
        """Number of KV heads per layer H."""
        return int(self.scores.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """The heads.json object."""
        model = {
            "architecture": None,
            "n_layer": self.n_layer,
            "n_head": None,
            "n_head_kv": self.n_head_kv,
            "name": None,
            "fingerprint": None,
        }
        model.update(self.model)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model": model,
            "scores": [[float(v) for v in row] for row in self.scores],
            "sink_size": int(self.sink_size),
            "window_size": int(self.window_size),
            "method": self.method,
            "training": dict(self.training),
        }


def check_scores(scores: Any) -> np.ndarray:
    """Scores as float32 [L, H] clipped to [0, 1] (published gates run slightly outside it, e.g. -0.011 or
    1.008); HeadsFileError only for a bad shape, NaN or inf."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HeadsFileError(f"scores must be a rectangular L x H table of numbers ({exc})") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise HeadsFileError(f"scores must be a non-empty L x H table, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        layer, head = (int(i) for i in np.argwhere(bad)[0])
        raise HeadsFileError(f"score of layer {layer} head {head} is {arr[layer, head]} (must be a finite number)")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _validate_schema(obj: Any, path: Path) -> None:
    """Validate a heads.json object against HEADS_SCHEMA (one-line error)."""
    import jsonschema

    try:
        jsonschema.validate(obj, HEADS_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        msg = exc.message.splitlines()[0]
        if len(msg) > 160:
            msg = msg[:157] + "..."
        raise HeadsFileError(f"{path}: invalid heads file at {where}: {msg}") from None


def _reject_constant(name: str) -> float:
    """json parse_constant hook: keep NaN/Infinity as floats so the score check names them."""
    return float(name)


def _load_json(path: Path) -> HeadScores:
    """Read and validate a heads.json file."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise HeadsFileError(f"{path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise HeadsFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    _validate_schema(obj, path)
    rows = obj["scores"]
    if len({len(r) for r in rows}) != 1:
        raise HeadsFileError(f"{path}: scores rows have different lengths {sorted({len(r) for r in rows})}")
    if any(v is None for r in rows for v in r):
        raise HeadsFileError(f"{path}: scores contain null (NaN?) values")
    try:
        heads = HeadScores(
            scores=np.asarray(rows, dtype=np.float64),
            sink_size=int(obj.get("sink_size", DEFAULT_SINK_SIZE)),
            window_size=int(obj.get("window_size", DEFAULT_WINDOW_SIZE)),
            method=str(obj.get("method", "unknown")),
            model=dict(obj.get("model") or {}),
            training=dict(obj.get("training") or {}),
        )
    except HeadsFileError as exc:
        raise HeadsFileError(f"{path}: {exc}") from None
    _check_model_shape(heads, path)
    return heads


def _check_model_shape(heads: HeadScores, path: Path) -> None:
    """The model block's n_layer / n_head_kv, when given, must match the scores table."""
    n_layer, n_head_kv = heads.model.get("n_layer"), heads.model.get("n_head_kv")
    if (n_layer is not None and n_layer != heads.n_layer) or (n_head_kv is not None and n_head_kv != heads.n_head_kv):
        raise HeadsFileError(
            f"{path}: model says {n_layer} x {n_head_kv} heads but scores are {heads.n_layer} x {heads.n_head_kv}"
        )


def _parse_tsv(text: str, path: Path) -> np.ndarray:
    """Parse L rows of H tab/space-separated floats (blank lines and # comments ignored)."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            rows.append([float(tok) for tok in line.replace(",", " ").split()])
        except ValueError:
            raise HeadsFileError(f"{path}:{lineno}: not a row of numbers: {line[:60]!r}") from None
    if not rows:
        raise HeadsFileError(f"{path}: empty pattern file")
    if len({len(r) for r in rows}) != 1:
        raise HeadsFileError(f"{path}: rows have different numbers of heads {sorted({len(r) for r in rows})}")
    return np.asarray(rows, dtype=np.float64)


def _load_tsv(path: Path) -> HeadScores:
    """Read a DuoAttention/RLKV pattern file, with sink/recent sizes from a config.json beside it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HeadsFileError(f"{path}: not a text file") from None
    scores = _parse_tsv(text, path)
    sink, window = DEFAULT_SINK_SIZE, DEFAULT_WINDOW_SIZE
    config = path.parent / "config.json"
    training: dict[str, Any] = {"imported_from": path.name}
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HeadsFileError(f"{config}: not valid JSON ({exc})") from None
        if isinstance(cfg, dict):
            sink = _int_field(cfg, "sink_size", sink, config)
            window = _int_field(cfg, "recent_size", _int_field(cfg, "window_size", window, config), config)
            training["config"] = {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}
    try:
        return HeadScores(
            scores=scores, sink_size=sink, window_size=window, method="duo-attention-tsv", training=training
        )
    except HeadsFileError as exc:
        raise HeadsFileError(f"{path}: {exc}") from None


def _int_field(cfg: dict[str, Any], key: str, default: int, path: Path) -> int:
    """An optional non-negative integer from a config dict."""
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HeadsFileError(f"{path}: {key} must be a non-negative integer, got {value!r}")
    return value


def load_heads(path: str | os.PathLike[str]) -> HeadScores:
    """Load heads.json or a DuoAttention/RLKV ``*.tsv`` (a directory holding one of them also works)."""
    p = Path(path)
    if p.is_dir():
        candidates = [p / "heads.json", *sorted(p.glob("*.json")), *sorted(p.glob("*.tsv"))]
        found = [c for c in candidates if c.is_file() and c.name != "config.json"]
        if not found:
            raise HeadsFileError(f"{p}: no heads.json or *.tsv in this directory")
        p = found[0]
    if not p.is_file():
        raise HeadsFileError(f"{p}: no such heads file")
    try:
        heads = _load_tsv(p) if p.suffix.lower() in (".tsv", ".txt", ".csv") else _load_json(p)
    except OSError as exc:
        raise HeadsFileError(f"{p}: cannot read ({exc.strerror})") from None
    heads.source_file = p
    return heads


def portable_path(value: str) -> str:
    """A path as a heads file records it: relative paths as given, an absolute one by its file name only (a heads
    file travels between machines: no home folders, checkouts or temporary folders)."""
    return os.path.basename(value.rstrip("/")) or value if os.path.isabs(value) else value


def _portable_command(command: str) -> str:
    """A recorded command line with every absolute path argument (also --flag=/path) cut to its file name."""
    import shlex

    try:
        words = shlex.split(command)
    except ValueError:
        return command
    out = []
    for word in words:
        flag, eq, value = word.partition("=")
        out.append(f"{flag}={portable_path(value)}" if eq and flag.startswith("-") else portable_path(word))
    return shlex.join(out)


def portable(value: Any, key: str = "") -> Any:
    """`value` with absolute paths replaced as `portable_path` does, in strings, lists and dicts (a `command`
    string word by word): what save_heads writes into a heads file's model and training blocks."""
    if isinstance(value, str):
        return _portable_command(value) if key == "command" else portable_path(value)
    if isinstance(value, dict):
        return {k: portable(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    return value


def save_heads(h: HeadScores, path: str | os.PathLike[str]) -> None:
    """Write heads.json atomically; absolute paths in its model and training blocks are cut to file names
    (`portable`), so the file records what the user passed, not the layout of the machine it was made on."""
    obj = h.to_dict()
    obj["model"] = portable(obj["model"])
    obj["training"] = portable(obj["training"])
    _validate_schema(obj, Path(path))
    atomic_write_text(Path(path), json.dumps(obj, indent=1) + "\n")


# Where each system reads a head pattern: DuoAttention's loaders (full_attention_heads.tsv + config.json with
# sink_size / recent_size) and RLKV's released gates (adapter_weights.tsv). `_load_tsv` reads both back.
EXPORT_FILES = {"duoattention": "full_attention_heads.tsv", "rlkv": "adapter_weights.tsv"}


def export_pattern(h: HeadScores, fmt: str, out: str | os.PathLike[str], force: bool = False) -> list[Path]:
    """Write `h` as DuoAttention's or RLKV's pattern: the TSV (L rows x H scores) and a config.json beside it
    (sink_size, recent_size), the exact inverse of `load_heads` on them. `out` is a folder (created) or a *.tsv
    path; an existing config.json that says something else is kept unless `force`. Returns the files written."""
    if fmt not in EXPORT_FILES:
        raise HeadsFileError(f"unknown pattern format '{fmt}' (one of {', '.join(EXPORT_FILES)})")
    out = Path(out)
    tsv = out if out.suffix.lower() == ".tsv" else out / EXPORT_FILES[fmt]
    if out.suffix.lower() != ".tsv":
        if out.exists() and not out.is_dir():
            raise HeadsFileError(f"{out}: not a folder (give a folder, or a path ending in .tsv)")
        out.mkdir(parents=True, exist_ok=True)
    elif not tsv.parent.is_dir():
        raise HeadsFileError(f"{tsv.parent}: no such folder")
    config = tsv.parent / "config.json"
    body = {
        "sink_size": int(h.sink_size),
        "recent_size": int(h.window_size),
        "method": h.method,
        "model": h.model.get("name"),
        "n_layer": h.n_layer,
        "n_head_kv": h.n_head_kv,
        "exported_by": "rlkv-edge",
    }
    text = json.dumps(body, indent=1) + "\n"
    if config.is_file() and not force and config.read_text(encoding="utf-8", errors="replace") != text:
        raise HeadsFileError(f"{config} exists and would be replaced (pass --force, or export into an empty folder)")
    export_tsv(h, tsv)
    atomic_write_text(config, text)
    return [tsv, config]


def export_tsv(h: HeadScores, path: str | os.PathLike[str]) -> None:
    """Write a DuoAttention-style TSV (L rows × H tab-separated scores) atomically."""
    lines = ["\t".join(_fmt(v) for v in row) for row in h.scores]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


def _fmt(value: float) -> str:
    """Shortest text that reads back as the same float32."""
    return repr(float(value)) if not math.isnan(value) else "nan"

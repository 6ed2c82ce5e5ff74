"""`convert_gguf`: write a copy of a GGUF with KV heads re-ordered by score and rlkv.* metadata."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderTensor

from rlkv_edge.atomic import file_mode
from rlkv_edge.errors import ConvertError
from rlkv_edge.heads import HeadScores
from rlkv_edge.masks import check_sparsity, describe_tie, n_full_heads
from rlkv_edge.memory import format_mib
from rlkv_edge.metadata import (
    RLKV_PREFIX,
    ModelInfo,
    gguf_fingerprint,
    has_rlkv,
    model_info,
    open_gguf,
    reader_values,
    stored_perm,
)

from .reorder import (
    TensorPlan,
    cols_are_byte_moves,
    head_order,
    permute_tensor,
    plan_tensor,
    reencode_cols,
    reencode_type,
)
from .writer import GGUFStreamWriter, TensorEntry, encode_kv, raw_field_bytes, tensor_nbytes

RLKV_VERSION = 1
DEFAULT_SPARSITY = 0.5


@dataclass
class Reencoded:
    """A tensor whose type changed because its columns could not be moved as whole quant blocks."""

    name: str
    old_type: str
    new_type: str
    old_bytes: int
    new_bytes: int


@dataclass
class ConvertReport:
    """What convert_gguf did."""

    src: Path
    dst: Path
    architecture: str
    n_layer: int
    n_head_kv: int
    sparsity: float
    sink_size: int
    window_size: int
    n_full: int
    head_perm: np.ndarray
    head_scores: np.ndarray
    permuted_tensors: list[str] = field(default_factory=list)
    reencoded: list[Reencoded] = field(default_factory=list)
    src_bytes: int = 0
    dst_bytes: int = 0
    seconds: float = 0.0
    reconverted: bool = False
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"wrote {self.dst} ({format_mib(self.dst_bytes, 1)}) in {self.seconds:.1f} s",
            f"{self.architecture}: {self.n_layer} layers x {self.n_head_kv} KV heads, "
            f"{len(self.permuted_tensors)} tensors re-ordered"
            + (" (re-converted from the original head order)" if self.reconverted else ""),
            f"sparsity {self.sparsity:g}: {self.n_full} of {self.n_layer * self.n_head_kv} heads full; "
            f"sink {self.sink_size}, window {self.window_size}",
        ]
        tie = describe_tie(self.head_scores.reshape(self.n_layer, self.n_head_kv), self.sparsity)
        lines += [f"warning: {w}" for w in ([tie] if tie else []) + self.warnings]
        for r in self.reencoded:
            lines.append(
                f"re-encoded {r.name}: {r.old_type} -> {r.new_type} ({r.old_bytes} -> {r.new_bytes} bytes, "
                f"{r.new_bytes - r.old_bytes:+d}); columns could not be moved as whole quant blocks"
            )
        return "\n".join(lines)


def default_output(src: str | os.PathLike[str]) -> Path:
    """<stem>.rlkv.gguf beside the input."""
    p = Path(src)
    stem = p.name[: -len(".gguf")] if p.name.lower().endswith(".gguf") else p.name
    if stem.endswith(".rlkv"):
        stem = stem[: -len(".rlkv")]
    return p.with_name(f"{stem}.rlkv.gguf")


def _check_params(heads: HeadScores, info: ModelInfo, sparsity: float, sink: int, window: int, src: Path) -> None:
    """Shape of the heads file against the model, and the ranges of s, S, W."""
    want = (info.n_layer, info.n_head_kv)
    if heads.scores.shape != want:
        raise ConvertError(
            f"heads file is {heads.n_layer} x {heads.n_head_kv} (layers x KV heads) but {src.name} has "
            f"{want[0]} x {want[1]}"
        )
    check_sparsity(sparsity, "--sparsity")
    if not 0 <= sink < 2**32:
        raise ConvertError(f"sink size must be a non-negative 32-bit integer, got {sink}")
    if not 1 <= window < 2**32:
        raise ConvertError(f"window size must be a positive 32-bit integer, got {window}")


# HF model_type -> GGUF architecture where they differ (Mistral 7B GGUFs are "llama").
_GGUF_ARCH = {"mistral": "llama"}


def _model_mismatch(heads: HeadScores, info: ModelInfo, src: Path, force: bool) -> list[str]:
    """Compare the heads file's model block with the GGUF: refuse another model without --force; a different
    fingerprint alone is a warning (another quantization of the same model has another one)."""
    model = heads.model
    arch = model.get("architecture")
    differ = [
        f"{what} {theirs} vs {ours}"
        for what, theirs, ours in (
            ("architecture", _GGUF_ARCH.get(str(arch), arch) if arch else None, info.architecture),
            ("query heads", model.get("n_head"), info.n_head),
        )
        if theirs is not None and theirs != ours
    ]
    named = model.get("name") or "another model"
    if differ and not force:
        raise ConvertError(
            f"the heads file is for {named} ({', '.join(differ)} in {src.name}); pass --force to convert anyway"
        )
    warnings = [f"the heads file is for {named} ({', '.join(differ)}); converted anyway (--force)"] if differ else []
    fingerprint = model.get("fingerprint")
    if fingerprint and str(fingerprint).startswith("sha256-16m:") and fingerprint != gguf_fingerprint(src):
        warnings.append(
            f"the heads file was trained on another GGUF file ({model.get('name') or fingerprint}); "
            "fine for another quantization of the same model, wrong for another model"
        )
    return warnings


def _check_paths(src: Path, dst: Path) -> None:
    """Never write over the input; the output directory must exist."""
    if dst.exists() and (os.path.samefile(src, dst) or dst.is_dir()):
        what = "the input file" if not dst.is_dir() else "a directory"
        raise ConvertError(f"output {dst} is {what}; choose another output path")
    if dst.resolve() == src.resolve():
        raise ConvertError(f"output {dst} is the input file; choose another output path")
    if not dst.parent.resolve().is_dir():
        raise ConvertError(f"output directory {dst.parent} does not exist")


def _source_string(heads: HeadScores, heads_path: str | None, src: Path) -> str:
    """rlkv.source: method, heads file name and a hash of the scores, source GGUF name."""
    digest = hashlib.sha256(np.ascontiguousarray(heads.scores, dtype="<f4").tobytes()).hexdigest()[:16]
    info: dict[str, Any] = {"method": heads.method, "scores_sha256": digest, "gguf": src.name}
    heads_file = heads_path or heads.source_file
    if heads_file:
        info["heads"] = Path(heads_file).name
    if heads.model.get("fingerprint"):
        info["fingerprint"] = heads.model["fingerprint"]
    return json.dumps(info, sort_keys=True)


def _kv_records(reader: GGUFReader) -> Iterator[bytes]:
    """Raw bytes of every source key/value record except rlkv.* keys, in file order."""
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    ends = [f.offset for f in fields[1:]] + [reader.tensors[0].field.offset if reader.tensors else -1]
    for f, end in zip(fields, ends, strict=True):
        if f.name.startswith(RLKV_PREFIX):
            continue
        raw = bytes(reader.data[f.offset : end]) if end > f.offset else raw_field_bytes(f)
        yield raw


def _rlkv_records(
    scores: np.ndarray, perm: np.ndarray, sparsity: float, sink: int, window: int, source: str, calibration: str | None
) -> list[bytes]:
    """The rlkv.* key/value records (docs/DESIGN.md §3)."""
    extra = [encode_kv("rlkv.calibration", calibration, GGUFValueType.STRING)] if calibration else []
    return [
        encode_kv("rlkv.version", RLKV_VERSION, GGUFValueType.UINT32),
        encode_kv("rlkv.head_scores", scores.astype(np.float32).ravel(), GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
        encode_kv("rlkv.head_perm", perm.astype(np.uint32).ravel(), GGUFValueType.ARRAY, GGUFValueType.UINT32),
        encode_kv("rlkv.sparsity", float(np.float32(sparsity)), GGUFValueType.FLOAT32),
        encode_kv("rlkv.sink_size", int(sink), GGUFValueType.UINT32),
        encode_kv("rlkv.window_size", int(window), GGUFValueType.UINT32),
        encode_kv("rlkv.source", source, GGUFValueType.STRING),
        *extra,
    ]


@dataclass
class _Job:
    """One tensor of the output: its source, plan and (possibly new) type."""

    src: ReaderTensor
    plan: TensorPlan | None
    out_type: GGMLQuantizationType

    @property
    def ne(self) -> tuple[int, ...]:
        """ggml dims."""
        return tuple(int(d) for d in self.src.shape)


def _plan_jobs(reader: GGUFReader, info: ModelInfo, moves: np.ndarray) -> list[_Job]:
    """Classify every tensor: copied, permuted by byte moves, or re-encoded."""
    identity = np.all(moves == np.arange(moves.shape[1]), axis=1)
    jobs = []
    seen_layers = set()
    for t in reader.tensors:
        ne = tuple(int(d) for d in t.shape)
        plan = plan_tensor(t.name, ne, info)
        qtype = GGMLQuantizationType(t.tensor_type)
        out_type = qtype
        if plan is not None:
            if plan.layer >= info.n_layer:
                raise ConvertError(f"{t.name}: layer {plan.layer} but the model has {info.n_layer} layers")
            seen_layers.add(plan.layer)
            if identity[plan.layer]:
                plan = None  # heads of this layer stay where they are: copy the bytes
            elif plan.kind == "cols" and not cols_are_byte_moves(qtype, plan.block):
                out_type = reencode_type(qtype, plan.block, ne[0])
        jobs.append(_Job(t, plan, out_type))
    if len(seen_layers) != info.n_layer:
        missing = sorted(set(range(info.n_layer)) - seen_layers)
        raise ConvertError(f"no attention tensors found for layers {missing[:8]}; cannot re-order heads")
    return jobs


def _tensor_data(job: _Job, moves: np.ndarray) -> np.ndarray:
    """Re-ordered data of a planned tensor (moves[l, j]: current position of the head for slot j)."""
    assert job.plan is not None
    perm = moves[job.plan.layer]
    qtype = GGMLQuantizationType(job.src.tensor_type)
    data = np.asarray(job.src.data)
    if job.out_type != qtype:
        return reencode_cols(data, qtype, job.out_type, perm)
    return permute_tensor(data, qtype, job.plan, perm)


def _progress(enabled: bool, total: int) -> Any:
    """A Rich progress bar on stderr counting bytes, or a no-op."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]convert"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )
    return progress


def convert_gguf(
    src: str | os.PathLike[str],
    heads: HeadScores,
    dst: str | os.PathLike[str] | None = None,
    *,
    sparsity: float | None = None,
    sink: int | None = None,
    window: int | None = None,
    force: bool = False,
    progress: bool = True,
    heads_path: str | None = None,
    calibration: str | None = None,
) -> ConvertReport:
    """Re-order KV heads of src by heads.scores into dst (atomic write) and add rlkv.* metadata (calibration:
    an rlkv.calibration JSON string to store, see rlkv_edge/calibration.py)."""
    t0 = time.perf_counter()
    src_p = Path(src)
    reader = open_gguf(src_p)
    values = reader_values(reader)
    info = model_info(values, src_p)
    n_split = reader.get_field("split.count")
    if n_split is not None and int(n_split.contents()) > 1:
        raise ConvertError(f"{src_p.name} is one shard of a split GGUF; merge it first (llama-gguf-split --merge)")
    dst_p = Path(dst) if dst is not None else default_output(src_p)
    s = DEFAULT_SPARSITY if sparsity is None else float(sparsity)
    sink_n = heads.sink_size if sink is None else int(sink)
    window_n = heads.window_size if window is None else int(window)
    _check_params(heads, info, s, sink_n, window_n, src_p)
    warnings = _model_mismatch(heads, info, src_p, force)
    _check_paths(src_p, dst_p)
    converted = has_rlkv(values)
    if converted and not force:
        raise ConvertError(f"{src_p.name} is already converted (has rlkv.* metadata); pass --force to re-convert")
    current = stored_perm(values, info, src_p)  # current[l, j] = original index of stored head j
    order = head_order(heads.scores)  # order[l, j] = original index of the head that goes to slot j
    inv_current = np.argsort(current, axis=1)
    moves = np.take_along_axis(inv_current, order, axis=1)
    new_scores = np.take_along_axis(heads.scores, order, axis=1)

    jobs = _plan_jobs(reader, info, moves)
    entries = [TensorEntry(j.src.name, j.ne, j.out_type, tensor_nbytes(j.ne, j.out_type)) for j in jobs]
    kv = list(_kv_records(reader))
    kv += _rlkv_records(new_scores, order, s, sink_n, window_n, _source_string(heads, heads_path, src_p), calibration)
    report = ConvertReport(
        src=src_p,
        dst=dst_p,
        architecture=info.architecture,
        n_layer=info.n_layer,
        n_head_kv=info.n_head_kv,
        sparsity=float(np.float32(s)),
        sink_size=sink_n,
        window_size=window_n,
        n_full=n_full_heads(s, info.n_layer, info.n_head_kv),
        head_perm=order,
        head_scores=new_scores,
        src_bytes=os.path.getsize(src_p),
        reconverted=converted,
        warnings=warnings,
    )
    _write(reader, src_p, dst_p, jobs, entries, kv, moves, report, progress)
    report.dst_bytes = os.path.getsize(dst_p)
    report.seconds = time.perf_counter() - t0
    return report


def _write(
    reader: GGUFReader,
    src: Path,
    dst: Path,
    jobs: list[_Job],
    entries: list[TensorEntry],
    kv: list[bytes],
    moves: np.ndarray,
    report: ConvertReport,
    show_progress: bool,
) -> None:
    """Stream all tensors into a temp file beside dst, then os.replace it into place."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConvertError(f"cannot write to {dst.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with ExitStack() as stack:
            out = stack.enter_context(os.fdopen(fd, "wb"))
            src_f = stack.enter_context(open(src, "rb"))
            bar = stack.enter_context(_progress(show_progress, sum(e.n_bytes for e in entries)))
            task = bar.add_task("", total=sum(e.n_bytes for e in entries))
            writer = GGUFStreamWriter(out, kv, entries, int(reader.alignment))
            for job, entry in zip(jobs, entries, strict=True):
                bar.update(task, description=job.src.name)
                if job.plan is None:
                    writer.copy_from(job.src.name, src_f, int(job.src.data_offset))
                else:
                    writer.write_array(job.src.name, _tensor_data(job, moves))
                    report.permuted_tensors.append(job.src.name)
                    if entry.qtype != job.src.tensor_type:
                        report.reencoded.append(
                            Reencoded(
                                job.src.name,
                                GGMLQuantizationType(job.src.tensor_type).name,
                                entry.qtype.name,
                                int(job.src.n_bytes),
                                entry.n_bytes,
                            )
                        )
                bar.advance(task, entry.n_bytes)
            writer.finish()
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConvertError(f"writing {dst} failed: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

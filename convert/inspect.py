"""`rlkv-edge inspect`'s report: a GGUF's heads, F_l per layer and KV memory as text, and a heat map."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rlkv_edge.calibration import Calibration
from rlkv_edge.errors import UsageError
from rlkv_edge.masks import full_head_mask
from rlkv_edge.memory import format_mib


def plot_scores(info: dict[str, Any], path: str | os.PathLike[str], sparsity: float) -> None:
    """Save a layer × head heat map of the scores (original head order), local heads hatched."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)") from None
    if not info.get("converted"):
        raise UsageError(f"{info['path']}: no rlkv.* metadata to plot (convert it first)")
    scores = np.asarray(info["scores"], dtype=np.float32)
    stored = np.asarray(info["head_scores"], dtype=np.float32)
    perm = np.asarray(info["head_perm"], dtype=np.int64)
    mask_stored = full_head_mask(stored, sparsity)
    mask = np.zeros_like(mask_stored)
    np.put_along_axis(mask, perm, mask_stored, axis=1)
    n_layer, n_head = scores.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * n_head + 2), max(3.0, 0.22 * n_layer + 1.5)))
    im = ax.imshow(scores, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ys, xs = np.nonzero(~mask)
    ax.scatter(xs, ys, marker="x", s=12, c="white", linewidths=0.8, label="local")
    ax.set_xlabel("KV head (original order)")
    ax.set_ylabel("layer")
    ax.set_title(f"{info['architecture']} head scores (x = local at s={sparsity:g})")
    fig.colorbar(im, ax=ax, label="score")
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as exc:
        raise UsageError(f"cannot write plot {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def _calibration_line(info: dict[str, Any]) -> str:
    """One line about the file's rlkv.calibration (convert --calibrate)."""
    if not info.get("calibration"):
        return "none (--kv-budget picks only the sparsity; convert --calibrate TEXT to measure a grid)"
    cal = Calibration.from_json(info["calibration"])
    types = sorted({p.type_k for p in cal.points})
    return f"{len(cal.points)} points ({', '.join(types)}) measured on {cal.n_tokens} tokens of {cal.text}"


def render_report(info: dict[str, Any], mem: dict[str, Any], plot: str | os.PathLike[str] | None) -> str:
    """The human-readable `inspect` report of a file's metadata and its KV memory estimate."""
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
            f"calibration   {_calibration_line(info)}",
        ]
    f_l = mem["full_heads_per_layer"]
    n_heads = info["n_layer"] * info["n_head_kv"]
    lines += [
        f"sparsity      {mem['sparsity']:g}: {mem['n_full']} of {n_heads} heads full",
        "F_l           " + " ".join(str(f) for f in f_l),
        *([f"tie           {mem['tie']}"] if mem.get("tie") else []),
        f"KV @ {mem['n_ctx']:<8} {format_mib(mem['kv_bytes_uncompressed'], 1)} uncompressed -> "
        f"{format_mib(mem['kv_bytes_compressed'], 1)} with rlkv ({mem['ratio']:.1%}; full cache "
        f"{format_mib(mem['kv_bytes_full_cache'], 1)}, local ring of {mem['ring_cells']} cells "
        f"{format_mib(mem['kv_bytes_local_cache'], 1)})",
        f"assumes       {mem['assumption']}",
    ]
    if plot is not None:
        lines.append(f"plot          {plot}")
    return "\n".join(lines)

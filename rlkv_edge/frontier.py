"""The memory–quality–speed frontier behind `rlkv-edge frontier` (docs/DESIGN.md §7).

Every configuration — the f16 full cache, llama.cpp's KV cache quantization, rlkv at several s × (S, W), rlkv
composed with quantization, all-local (StreamingLLM-style, alone and quantized), random and per-layer-uniform
masks — is loaded in this one process and measured the same way: KV bytes at n_ctx (what the runtime
allocated), mean KL(full f16 ‖ config) and top-1 agreement over a text, and, optionally, pp / tg tokens/s at a
depth as ratios to the f16 full cache. A point is on the Pareto front when no other point has no more KV
bytes, no more KL and no less decode speed, and is better in one of them. `calibrate` measures the grid of
rlkv_edge/calibration.py the same way, for `convert --calibrate`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlkv_edge.bench import bench_loaded
from rlkv_edge.calibration import Calibration, CalibrationPoint, grid
from rlkv_edge.evaluate import Task, compare_logprobs, run_tasks, tail_logprobs, text_logprobs
from rlkv_edge.memory import MIB
from rlkv_edge.models import open_model

FAMILIES = ("full", "kv-quant", "rlkv", "rlkv+quant", "all-local", "random", "uniform")


@dataclass(frozen=True)
class FrontierConfig:
    """One point to measure: its family, the file, and how to load it (None: the file's own S, W, s)."""

    label: str
    family: str
    path: Path
    sparsity: float | None = None
    sink: int | None = None
    window: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"


@dataclass
class FrontierPoint:
    """What one configuration measured."""

    config: FrontierConfig
    kv_bytes: int
    mean_kl: float
    top1: float
    pp: float | None = None  # tokens/s at the depth
    tg: float | None = None
    pp_ratio: float | None = None  # against the first configuration (f16 full cache)
    tg_ratio: float | None = None
    accuracy: float | None = None  # share of the tasks answered correctly (greedy), when tasks were given
    on_front: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kv_mib(self) -> float:
        """KV bytes in MiB."""
        return self.kv_bytes / MIB


def measure(
    configs: Sequence[FrontierConfig],
    tokens: Sequence[int],
    *,
    n_ctx: int,
    depth: int | None = 2048,
    n_threads: int | None = None,
    tasks: Sequence[Task] = (),
    task_options: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    score_last: int | None = None,
    reference: np.ndarray | None = None,
    on_point: Callable[[FrontierPoint, np.ndarray | None], None] | None = None,
) -> list[FrontierPoint]:
    """Measure every configuration in this process; the first one is the reference (f16 full cache) unless
    `reference` (its log-probabilities, saved from an earlier run) is given. With tasks, also the share answered
    correctly (`run_tasks` with task_options: max_tokens, system, reward). score_last: KL over the last
    positions of the text only (long texts and large vocabularies). on_point(point, reference log-probs when
    this point made them, else None) is called as each point is measured (to save work as it goes)."""
    base_lp: np.ndarray | None = reference
    points: list[FrontierPoint] = []
    threads = n_threads or min(os.cpu_count() or 1, 8)
    from rlkv_edge import runtime

    for cfg in configs:

        def load(logits_all: bool, cfg: FrontierConfig = cfg) -> Any:
            return open_model(
                cfg.path,
                n_ctx=n_ctx,
                sparsity=cfg.sparsity,
                sink=cfg.sink,
                window=cfg.window,
                type_k=cfg.type_k,
                type_v=cfg.type_v,
                logits_all=logits_all,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=512,
                n_ubatch=512,
            )

        llm = load(logits_all=score_last is None)
        try:
            full, local = runtime.kv_bytes(llm)
            lp = text_logprobs(llm, tokens) if score_last is None else tail_logprobs(llm, tokens, score_last)
            made_reference = base_lp is None
            base_lp = lp if base_lp is None else base_lp
            kl, top1 = compare_logprobs(base_lp, lp)
            del lp
        finally:
            llm.close()
        point = FrontierPoint(cfg, full + local, kl, top1)
        if depth is not None or tasks:  # a second load: logits for every token (for KL) slow generation down
            llm = load(logits_all=False)
            try:
                if tasks:
                    opts = {"max_tokens": 64, **(task_options or {})}
                    point.accuracy = run_tasks(llm, tasks, label=cfg.label, sparsity=cfg.sparsity, **opts).accuracy
                if depth is not None:
                    pp, tg = bench_loaded(llm, [depth], n_pp=512, n_tg=128, reps=1)
                    point.pp, point.tg = pp[depth][0], tg[depth][0]
            finally:
                llm.close()
        points.append(point)
        if log:
            speed = f", pp512 {point.pp:.1f} t/s, tg128 {point.tg:.1f} t/s" if point.tg else ""
            acc = f", accuracy {point.accuracy:.1%}" if point.accuracy is not None else ""
            log(f"{cfg.label}: KV {point.kv_mib:.2f} MiB, KL {kl:.5f}, top-1 {top1:.4f}{acc}{speed}")
        if on_point:
            on_point(point, base_lp if made_reference else None)
    if not points:
        return points
    base = points[0]
    for p in points:
        p.pp_ratio = p.pp / base.pp if p.pp and base.pp else None
        p.tg_ratio = p.tg / base.tg if p.tg and base.tg else None
    mark_front(points)
    return points


def _dominates(a: FrontierPoint, b: FrontierPoint) -> bool:
    """a is no worse than b in KV bytes, KL and decode speed (when measured), and better in one."""
    speed_a, speed_b = a.tg or 0.0, b.tg or 0.0
    no_worse = a.kv_bytes <= b.kv_bytes and a.mean_kl <= b.mean_kl and speed_a >= speed_b
    better = a.kv_bytes < b.kv_bytes or a.mean_kl < b.mean_kl or speed_a > speed_b
    return no_worse and better


def mark_front(points: list[FrontierPoint]) -> None:
    """Set on_front on the points no other point dominates."""
    for p in points:
        p.on_front = not any(_dominates(q, p) for q in points if q is not p)


def render(points: Sequence[FrontierPoint], meta: dict[str, Any]) -> str:
    """A markdown table, sorted by KV bytes; `*` marks the Pareto front."""
    base = points[0]
    speed = points[0].tg is not None
    acc = points[0].accuracy is not None
    head = "| front | config | family | K/V | s | S/W | KV MiB | × f16 | mean KL | top-1 |"
    rule = "|:---:|---|---|---|---:|---:|---:|---:|---:|---:|"
    if acc:
        head += f" {meta.get('tasks', 'tasks')} |"
        rule += "---:|"
    if speed:
        head += f" pp512 @ d{meta.get('depth')} | tg128 @ d{meta.get('depth')} |"
        rule += "---:|---:|"
    rows = [
        f"{meta.get('model')}: {meta.get('n_tokens')} tokens of {meta.get('text')}, KV at n_ctx {meta.get('n_ctx')}, "
        f"{meta.get('threads')} threads; ratios against the f16 full cache in the same process",
        "",
        head,
        rule,
    ]
    for p in sorted(points, key=lambda q: (q.kv_bytes, q.mean_kl)):
        c = p.config
        s = "–" if c.sparsity is None else f"{c.sparsity:g}"
        sw = "–" if c.sink is None else f"{c.sink}/{c.window}"
        row = (
            f"| {'*' if p.on_front else ''} | {c.label} | {c.family} | {c.type_k}/{c.type_v} | {s} | {sw} | "
            f"{p.kv_mib:.2f} | {p.kv_bytes / base.kv_bytes:.2f} | {p.mean_kl:.4f} | {p.top1:.1%} |"
        )
        if acc:
            row += f" {p.accuracy or 0:.1%} |"
        if speed:
            row += f" {p.pp_ratio or 0:.2f}× | {p.tg_ratio or 0:.2f}× |"
        rows.append(row)
    return "\n".join(rows)


def to_json(points: Sequence[FrontierPoint], meta: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary."""
    out = []
    for p in points:
        d = asdict(p)
        d["config"]["path"] = str(p.config.path)
        d["kv_mib"] = p.kv_mib
        out.append(d)
    return {**meta, "points": out}


def from_json(data: dict[str, Any]) -> list[FrontierPoint]:
    """The points of a `to_json` result, to re-render or re-plot it."""
    points = []
    for d in data["points"]:
        cfg = FrontierConfig(**{**d["config"], "path": Path(d["config"]["path"])})
        fields = {k: v for k, v in d.items() if k not in ("config", "kv_mib")}
        points.append(FrontierPoint(cfg, **fields))
    return points


def plot(points: Sequence[FrontierPoint], path: str | os.PathLike[str], title: str) -> None:
    """KV MiB vs mean KL, one marker per family, the Pareto front highlighted (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = dict(zip(FAMILIES, "o^sDvxP", strict=True))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for family in FAMILIES:
        pts = [p for p in points if p.config.family == family]
        if pts:
            ax.scatter([p.kv_mib for p in pts], [p.mean_kl for p in pts], marker=markers[family], label=family)
    front, best = [], float("inf")  # the memory-vs-KL front: each point beats every smaller cache on KL
    for p in sorted(points, key=lambda q: (q.kv_bytes, q.mean_kl)):
        if p.mean_kl < best:
            front.append(p)
            best = p.mean_kl
    ax.plot([p.kv_mib for p in front], [p.mean_kl for p in front], "k--", linewidth=0.8, label="front (MiB, KL)")
    fast = [p for p in points if p.on_front and p not in front]
    if fast:
        ax.scatter([p.kv_mib for p in fast], [p.mean_kl for p in fast], s=160, facecolors="none",
                   edgecolors="k", linewidths=0.8, label="on the front by decode speed")  # fmt: skip
    ax.set_xlabel("KV cache (MiB)")
    ax.set_ylabel("mean KL vs f16 full cache (nats)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def _types(type_k: str, type_v: str) -> str:
    """The pair as the frontier spells --cache-type: q8_0 when K and V are both q8_0, q8_0/q4_0 when mixed."""
    return type_k if type_k == type_v else f"{type_k}/{type_v}"


def calibrate(
    path: Path,
    tokens: Sequence[int],
    *,
    sink: int,
    window: int,
    text_name: str,
    points: Sequence[tuple[str, str, float, int, int]] | None = None,
    n_threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Calibration:
    """Mean KL(f16 full ‖ point) and top-1 on `tokens` for every (type K, type V, s, S, W) point (default: `grid`
    around the file's S/W), in this process; the f16 full cache is the reference."""
    todo = list(points if points is not None else grid(sink, window))
    ref = ("f16", "f16", 0.0, sink, window)
    if ref in todo:
        todo.remove(ref)
    todo.insert(0, ref)
    configs = [
        FrontierConfig(f"{_types(tk, tv)} s={s:g} S{sk}/W{w}", "calibration", path, s, sk, w, tk, tv)
        for tk, tv, s, sk, w in todo
    ]
    measured = measure(configs, tokens, n_ctx=len(tokens) + 16, depth=None, n_threads=n_threads, log=log)
    out = [
        CalibrationPoint(
            c.type_k, c.type_v, float(c.sparsity or 0.0), int(c.sink or 0), int(c.window or 0), m.mean_kl, m.top1
        )
        for c, m in zip(configs, measured, strict=True)
    ]
    return Calibration(n_tokens=len(tokens), text=os.path.basename(text_name), points=out)

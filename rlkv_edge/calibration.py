"""A model's own quality measurements per KV configuration, stored in its GGUF, and `--kv-budget`'s choice.

`rlkv-edge convert --calibrate TEXT` measures mean KL(f16 full ‖ config) and top-1 on TEXT for every point of
a grid (KV cache type × sparsity × sink/window) and stores them as JSON in the `rlkv.calibration` key
(docs/DESIGN.md §3; stock llama.cpp and older rlkv-edge ignore it). With a calibration, `--kv-budget SIZE`
picks the point with the lowest measured KL whose KV cache (docs/DESIGN.md §7, at --ctx) fits SIZE; without
one, it keeps the cache type and S/W it was given and picks the smallest sparsity that fits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rlkv_edge.errors import BudgetError, MetadataError
from rlkv_edge.memory import BudgetChoice, format_mib, kv_memory

KEY = "rlkv.calibration"
SHORT_CALIBRATION = (
    "; measured on a much shorter text than --ctx, where windows cost less than they will here "
    "(calibrate with --calibrate-tokens near the context you run)"
)
CALIBRATION_VERSION = 1

# The grid `convert --calibrate` measures: every K/V cache type pair at s = 0, then each sparsity × (S, W) × pair.
# K q8_0 with V q4_0 (-ctk q8_0 -ctv q4_0) is on SmolLM2's 8k frontier: KL 0.0127 at 0.41x f16's KV, where q4_0
# for both has 0.084 at 0.28x (docs/notes/smollm2-8k-in-detail.md, "Below q4_0's memory at 8k").
GRID_TYPES = (("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0"))
GRID_SPARSITIES = (0.25, 0.5, 0.75, 1.0)
GRID_SINK_WINDOWS = ((64, 256), (64, 1024))


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured configuration."""

    type_k: str
    type_v: str
    sparsity: float
    sink: int
    window: int
    mean_kl: float
    top1: float


@dataclass
class Calibration:
    """Points measured on `n_tokens` tokens of a text (`text`: its file name)."""

    n_tokens: int
    text: str
    points: list[CalibrationPoint] = field(default_factory=list)

    def to_json(self) -> str:
        """The rlkv.calibration string."""
        body = {"version": CALIBRATION_VERSION, "n_tokens": self.n_tokens, "text": self.text}
        return json.dumps({**body, "points": [asdict(p) for p in self.points]}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str = KEY) -> Calibration:
        """Parse an rlkv.calibration string; MetadataError naming what is wrong."""
        try:
            obj = json.loads(text)
            if obj.get("version") != CALIBRATION_VERSION:
                raise ValueError(f"unsupported version {obj.get('version')!r} (expected {CALIBRATION_VERSION})")
            points = [CalibrationPoint(**p) for p in obj["points"]]
            return cls(n_tokens=int(obj["n_tokens"]), text=str(obj.get("text", "")), points=points)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MetadataError(f"{where}: invalid calibration ({exc})") from None


def grid(sink: int, window: int) -> list[tuple[str, str, float, int, int]]:
    """(type K, type V, sparsity, S, W) of every point `convert --calibrate` measures (the file's S/W included)."""
    sws = list(dict.fromkeys([(sink, window), *GRID_SINK_WINDOWS]))
    points = [(tk, tv, 0.0, sink, window) for tk, tv in GRID_TYPES]
    points += [(tk, tv, s, sk, w) for s in GRID_SPARSITIES for sk, w in sws for tk, tv in GRID_TYPES]
    return points


def choose_config(
    info: dict[str, Any],
    calibration: Calibration,
    budget: int,
    n_ctx: int,
    *,
    type_k: str | None = None,
    type_v: str | None = None,
    sink: int | None = None,
    window: int | None = None,
    n_seq: int = 1,
) -> BudgetChoice:
    """The calibrated point with the lowest KL whose KV cache fits `budget` at n_ctx (ties: less memory);
    type_k/type_v/sink/window, when given, restrict the points to those values. BudgetError if none fits."""
    fits = []
    for p in calibration.points:
        wanted = (type_k, p.type_k), (type_v, p.type_v), (sink, p.sink), (window, p.window)
        if any(want is not None and want != got for want, got in wanted):
            continue
        mem = kv_memory(info, p.sparsity, n_ctx, p.type_k, p.type_v, n_seq=n_seq, sink=p.sink, window=p.window)
        if mem["kv_bytes_compressed"] <= budget:
            fits.append((p.mean_kl, mem["kv_bytes_compressed"], p, mem))
    if not fits:
        raise BudgetError(
            f"no calibrated configuration fits {format_mib(budget)} at --ctx {n_ctx} "
            "(lower --ctx, raise the budget, or drop --cache-type-k/-v, --sink, --window to widen the choice)"
        )
    _, n_bytes, p, mem = min(fits, key=lambda f: (f[0], f[1]))
    return BudgetChoice(
        sparsity=p.sparsity,
        kv_bytes=n_bytes,
        budget=budget,
        uncompressed_bytes=kv_memory(info, 0.0, n_ctx, n_seq=n_seq)["kv_bytes_uncompressed"],
        n_full=mem["n_full"],
        n_total=info["n_layer"] * info["n_head_kv"],
        memory=mem,
        type_k=p.type_k,
        type_v=p.type_v,
        sink=p.sink,
        window=p.window,
        mean_kl=p.mean_kl,
        basis=f"lowest KL measured on {calibration.n_tokens} tokens ({len(fits)} of {len(calibration.points)} "
        "calibrated points fit)" + (SHORT_CALIBRATION if n_ctx > 2 * calibration.n_tokens else ""),
    )


def dominating(
    calibration: Calibration, info: dict[str, Any], n_ctx: int, point: CalibrationPoint, n_seq: int = 1
) -> CalibrationPoint | None:
    """A calibrated point with no more KV memory at n_ctx and a lower KL than `point` (the lowest-KL such), or None."""

    def size(p: CalibrationPoint) -> int:
        mem = kv_memory(info, p.sparsity, n_ctx, p.type_k, p.type_v, n_seq=n_seq, sink=p.sink, window=p.window)
        return int(mem["kv_bytes_compressed"])

    own = size(point)
    better = [p for p in calibration.points if p.mean_kl < point.mean_kl and size(p) <= own]
    return min(better, key=lambda p: (p.mean_kl, size(p))) if better else None


def config_warnings(
    info: dict[str, Any],
    calibration: Calibration | None,
    n_ctx: int,
    *,
    sparsity: float | None,
    sink: int | None,
    window: int | None,
    type_k: str = "f16",
    type_v: str = "f16",
    n_ubatch: int = 512,
    n_seq: int = 1,
) -> list[str]:
    """One line each about a configuration that will hurt quality: a context above the model's trained one, a
    sparsity that leaves most layers without a full head, a point that the file's own calibration shows is
    dominated (another measured point needs no more memory and has a lower KL). None: the file's own value."""
    out = []
    trained = info.get("context_length")
    if trained and n_ctx > trained:
        out.append(
            f"context {n_ctx} is above the model's trained context ({trained} tokens): positions past it were never "
            "trained and answers degrade there"
        )
    if "n_layer" not in info:  # not converted: no head split to judge
        return out
    s = sparsity if sparsity is not None else float(info.get("sparsity") or 0.0)
    mem = kv_memory(info, s, n_ctx, type_k, type_v, n_ubatch, n_seq, sink, window)
    f_l = mem["full_heads_per_layer"]
    empty = sum(1 for f in f_l if f == 0)
    # more than three quarters: SmolLM2's measured, non-dominated s=0.75 (16 of 30 layers without one) stays quiet
    if 4 * empty > 3 * len(f_l):
        out.append(
            f"sparsity {s:.4g} leaves {empty} of {len(f_l)} layers without a full head ({mem['n_full']} of "
            f"{info['n_layer'] * info['n_head_kv']} heads full): most layers see only sink + window tokens, where "
            "quality falls off (lower the sparsity or raise the budget)"
        )
    if calibration is not None:
        sk, w = mem["sink"], mem["window"]
        here = [
            p
            for p in calibration.points
            if (p.type_k, p.type_v, p.sink, p.window) == (type_k, type_v, sk, w) and abs(p.sparsity - s) < 1e-6
        ]
        better = dominating(calibration, info, n_ctx, here[0], n_seq) if here else None
        if here and better is not None:
            out.append(
                f"this configuration (K {type_k}, V {type_v}, s={s:g}, S{sk}/W{w}; calibrated KL "
                f"{here[0].mean_kl:.4g}) "
                f"is dominated: K {better.type_k}, V {better.type_v}, s={better.sparsity:g}, "
                f"S{better.sink}/W{better.window} needs no more KV memory at --ctx-size {n_ctx} and measured KL "
                f"{better.mean_kl:.4g} (use --kv-budget to pick it)"
            )
    return out

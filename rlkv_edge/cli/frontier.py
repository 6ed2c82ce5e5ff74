"""`rlkv-edge frontier`: KV memory vs quality vs speed for rlkv and what a user would pick instead."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from rlkv_edge.atomic import atomic_path, atomic_write_text
from rlkv_edge.cli.app import progress
from rlkv_edge.cli.options import (
    LimitOpt,
    MaxTokensOpt,
    ModelOpt,
    ModelPathArg,
    RewardOpt,
    SystemOpt,
    TasksOpt,
    TextOpt,
    ThreadsOpt,
    check_plot_path,
    need_model,
)
from rlkv_edge.errors import UsageError
from rlkv_edge.evaluate import SYSTEM_PROMPT, load_reward, load_tasks, text_tokens
from rlkv_edge.frontier import FrontierConfig, measure, plot, render, to_json
from rlkv_edge.masks import check_sparsity
from rlkv_edge.models import ModelFile, read_model
from rlkv_edge.runtime import cache_type

DEFAULT_TYPES = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q8_0/q4_0")
DEFAULT_SW = ("16:64", "64:256", "64:1024")
COMPOSED = ("q8_0", "q4_0")  # cache types rlkv is composed with when --cache-type is not given


def _pair(text: str, sep: str, what: str) -> tuple[str, str]:
    """'a<sep>b' -> (a, b); 'a' -> (a, a)."""
    a, _, b = text.partition(sep)
    if not a or (sep in text and not b):
        raise UsageError(f"{what} '{text}': expected X or X{sep}Y")
    return a, b or a


def _sink_windows(specs: list[str]) -> list[tuple[int, int]]:
    """'S:W' strings -> [(S, W)], W >= 1."""
    out = []
    for spec in specs:
        try:
            s, w = (int(x) for x in spec.split(":"))
        except ValueError:
            raise UsageError(f"--sink-window '{spec}': expected SINK:WINDOW, e.g. 64:256") from None
        if s < 0 or w < 1:
            raise UsageError(f"--sink-window '{spec}': sink must be >= 0 and window >= 1")
        out.append((s, w))
    return out


def mask_files(model: ModelFile, n_random: int, uniform: bool, out_dir: Path) -> list[tuple[str, str, Path]]:
    """The model re-converted with random scores (one file per seed) and per-layer-uniform scores."""
    from rlkv_edge.convert import convert_gguf
    from rlkv_edge.heads import HeadScores

    shape = (model.shape.n_layer, model.shape.n_head_kv)
    sink, window = model.info["sink_size"], model.info["window_size"]
    masks = [(f"random-{seed}", "random", np.random.default_rng(seed).random(shape)) for seed in range(n_random)]
    if uniform:  # every layer keeps the same share of full heads: rank heads by index inside each layer
        rank = 1.0 - np.arange(shape[1])[None, :] / shape[1] - np.arange(shape[0])[:, None] * 1e-6
        masks.append(("uniform", "uniform", rank))
    out = []
    for label, family, scores in masks:
        dst = out_dir / f"{label}.rlkv.gguf"
        heads = HeadScores(scores, sink_size=sink, window_size=window, method=f"frontier {label}")
        convert_gguf(model.path, heads, dst, progress=False, force=True)
        out.append((label, family, dst))
    return out


def _configs(
    model: ModelFile,
    types: list[str],
    composed: list[str],
    sparsities: list[float],
    sws: list[tuple[int, int]],
    masks: list,
) -> list[FrontierConfig]:
    """Every configuration, the f16 full cache first; rlkv and all-local (at the middle S/W) are composed with the
    `composed` cache types."""
    base = 0.0 if model.converted else None
    cfgs = [FrontierConfig("f16 full", "full", model.path, base)]
    for t in types:
        k, v = _pair(t, "/", "--cache-type")
        cfgs.append(FrontierConfig(f"{t} full", "kv-quant", model.path, base, type_k=k, type_v=v))
    if not model.converted:
        return cfgs
    for s in sparsities:
        for sink, window in sws:
            cfgs.append(FrontierConfig(f"rlkv s={s:g} S{sink}/W{window}", "rlkv", model.path, s, sink, window))
    mid = sws[len(sws) // 2]  # (S, W) of the compositions and the masks
    kv_types = [(t, *_pair(t, "/", "--cache-type")) for t in composed]
    for s in sparsities:
        for t, k, v in kv_types:
            cfgs.append(
                FrontierConfig(f"rlkv s={s:g} S{mid[0]}/W{mid[1]} + {t}", "rlkv+quant", model.path, s, *mid, k, v)
            )
    for sink, window in sws:
        cfgs.append(FrontierConfig(f"all-local S{sink}/W{window}", "all-local", model.path, 1.0, sink, window))
    for t, k, v in kv_types:  # StreamingLLM-style with the same quantization: what a user could pick instead
        cfgs.append(FrontierConfig(f"all-local S{mid[0]}/W{mid[1]} + {t}", "all-local", model.path, 1.0, *mid, k, v))
    sink, window = mid
    s_mid = min(sparsities, key=lambda s: abs(s - 0.5))  # random/uniform masks where rlkv is usually run
    for label, family, path in masks:
        cfgs.append(FrontierConfig(f"{label} s={s_mid:g} S{sink}/W{window}", family, path, s_mid, sink, window))
    return cfgs


def frontier(
    model: ModelPathArg = None,
    model_opt: ModelOpt = None,
    text: TextOpt = None,
    n_tokens: Annotated[
        int, typer.Option("--tokens", min=16, help="Tokens of the text to use (n_ctx follows).")
    ] = 2048,
    sparsity: Annotated[
        list[float] | None, typer.Option("--sparsity", "-s", help="rlkv sparsities (repeatable).")
    ] = None,
    sink_window: Annotated[
        list[str] | None, typer.Option("--sink-window", help="S:W pairs for rlkv (repeatable), e.g. 64:256.")
    ] = None,
    cache_types: Annotated[
        list[str] | None,
        typer.Option(
            "--cache-type",
            help="KV cache types to compare, K or K/V (repeatable), e.g. q8_0, q8_0/q4_0; rlkv and all-local are "
            "composed with each (default: six types, compositions with q8_0 and q4_0).",
        ),
    ] = None,
    n_random: Annotated[int, typer.Option("--random", min=0, help="Random masks (seeds 0..N-1) at the middle s.")] = 3,
    uniform: Annotated[bool, typer.Option("--uniform/--no-uniform", help="A per-layer-uniform mask too.")] = True,
    depth: Annotated[int, typer.Option("--depth", "-d", min=0, help="Depth of the pp512 / tg128 speed test.")] = 2048,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Measure pp512 / tg128 at --depth.")] = True,
    tasks: TasksOpt = None,
    limit: LimitOpt = None,
    max_tokens: MaxTokensOpt = 64,
    system: SystemOpt = SYSTEM_PROMPT,
    reward: RewardOpt = None,
    threads: ThreadsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON results here.")] = None,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="Save KV MiB vs KL as a PNG.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
) -> None:
    """KV memory, KL / top-1 on a text, decode speed and (with --tasks) task accuracy for KV quantization, rlkv
    at several s × (S, W), both composed, all-local and random masks, in one process; marks the Pareto front."""
    if text is None:
        raise UsageError("frontier needs --text FILE (-f): a long UTF-8 text for KL / top-1")
    target = read_model(need_model(model, model_opt))
    sparsities = [check_sparsity(s, "--sparsity") for s in (sparsity or [0.25, 0.5, 0.75])]
    sws = _sink_windows(sink_window or list(DEFAULT_SW))
    types = list(cache_types if cache_types is not None else DEFAULT_TYPES)
    for t in types:
        for part in _pair(t, "/", "--cache-type"):
            cache_type(part, "--cache-type")
    if plot_path is not None:
        check_plot_path(plot_path)
    if n_tokens < 16 or n_random < 0 or depth < 0:
        raise UsageError("--tokens must be >= 16, --random and --depth >= 0")
    tokens = text_tokens(target, text, n_tokens)
    if max_tokens <= 0:
        raise UsageError("--max-tokens must be positive")
    task_list = load_tasks(tasks, limit) if tasks else []
    task_options = {
        "max_tokens": max_tokens,
        "system": system or None,
        "reward": load_reward(reward) if reward else None,
    }
    n_ctx = max(len(tokens), depth + 512 if speed else 0, 2048 if task_list else 0) + 16
    log = None if as_json else progress
    with tempfile.TemporaryDirectory() as tmp:
        masks = mask_files(target, n_random, uniform, Path(tmp)) if target.converted else []
        composed = types if cache_types is not None else [t for t in COMPOSED if t in types]
        configs = _configs(target, types, composed, sparsities, sws, masks)
        points = measure(
            configs,
            tokens,
            n_ctx=n_ctx,
            depth=depth if speed else None,
            n_threads=threads,
            tasks=task_list,
            task_options=task_options,
            log=log,
        )
    meta = {
        "model": target.path.name,
        "text": str(text),
        "n_tokens": len(tokens),
        "n_ctx": n_ctx,
        "depth": depth if speed else None,
        "threads": threads or min(os.cpu_count() or 1, 8),
        "heads": target.info.get("source") if target.converted else None,
        "tasks": f"{tasks} ({len(task_list)})" if task_list else None,
    }
    result = to_json(points, meta)
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    if plot_path is not None:
        with atomic_path(plot_path) as tmp:
            plot(points, tmp, f"{target.path.name}: KV memory vs KL ({len(tokens)} tokens)")
    typer.echo(json.dumps(result, indent=1) if as_json else render(points, meta))

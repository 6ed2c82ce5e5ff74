"""Per-KV-head gates on a transformers model: install, read, write, clamp, save and load.

Clamping to [0, 1] would leave every gate that training pushes past 1 (or below 0) tied with the others there,
and the mask rule would then pick among them by layer order. So each gate keeps its *excess*: the sum of what
every clamp cut off (> 0 for a gate held at 1, < 0 for one held at 0). `strict_scores` orders heads by gate,
then excess, and writes scores that keep that order (docs/DESIGN.md §5, strict rankings).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlkv_edge.train.attention import ATTN_NAME, BACKENDS, register

GATES_FILE = "rlkv_gates.pt"
EXCESS = "rlkv_gate_excess"  # buffer beside each gate: the sum of what clamp_gates cut off


def attention_modules(model: nn.Module) -> list[Any]:
    """The decoder's self-attention modules in layer order (modules with layer_idx, k_proj and o_proj)."""
    found = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "k_proj") and hasattr(m, "o_proj")]
    return sorted(found, key=lambda m: int(m.layer_idx))


def _n_kv_heads(model: Any, module: Any) -> int:
    """Number of KV heads of one attention module."""
    head_dim = getattr(module, "head_dim", None)
    if head_dim is None:
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return int(module.k_proj.out_features // head_dim)


def install_gates(
    model: Any, sink: int = 128, window: int = 256, backend: str = "auto", freeze: bool = True
) -> list[nn.Parameter]:
    """Add ``rlkv_gate`` (init 1), S and W to each attention module, switch to ``rlkv``, freeze the rest."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    register()
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"no attention modules with k_proj/o_proj found in {type(model).__name__}")
    gates = []
    for m in modules:
        ref = m.k_proj.weight
        if not isinstance(getattr(m, "rlkv_gate", None), nn.Parameter):
            m.rlkv_gate = nn.Parameter(torch.ones(_n_kv_heads(model, m), device=ref.device, dtype=torch.float32))
            m.register_buffer(EXCESS, torch.zeros_like(m.rlkv_gate.data), persistent=False)
        m.rlkv_sink, m.rlkv_window, m.rlkv_backend = int(sink), int(window), backend
        m.rlkv_gate.requires_grad_(True)
        gates.append(m.rlkv_gate)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTN_NAME)
    else:
        model.config._attn_implementation = ATTN_NAME
    return gates


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The gate parameters in layer order."""
    return [m.rlkv_gate for m in attention_modules(model) if hasattr(m, "rlkv_gate")]


def get_gates(model: nn.Module) -> np.ndarray:
    """Gates as a float32 array [L, H] (original head order)."""
    return np.stack([g.detach().float().cpu().numpy() for g in gate_parameters(model)]).astype(np.float32)


@torch.no_grad()
def set_gates(model: nn.Module, values: np.ndarray | torch.Tensor | float) -> None:
    """Overwrite all gates with an [L, H] array (or one scalar)."""
    for i, g in enumerate(gate_parameters(model)):
        row = values if isinstance(values, float | int) else torch.as_tensor(np.asarray(values)[i])
        g.copy_(torch.as_tensor(row, dtype=g.dtype).expand_as(g))


@contextmanager
def full_gates(model: nn.Module) -> Iterator[None]:
    """Within the block every gate is 1 (the model itself, every head full); the gates are restored after."""
    saved = [g.detach().clone() for g in gate_parameters(model)]
    set_gates(model, 1.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for g, value in zip(gate_parameters(model), saved, strict=True):
                g.copy_(value)


def _excess_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The excess buffers in layer order (see the module docstring)."""
    return [getattr(m, EXCESS) for m in attention_modules(model) if hasattr(m, "rlkv_gate")]


def get_excess(model: nn.Module) -> np.ndarray:
    """What clamping has cut off each gate so far, float64 [L, H] (> 0: pushed past 1, < 0: below 0)."""
    return np.stack([e.detach().double().cpu().numpy() for e in _excess_buffers(model)])


@torch.no_grad()
def clamp_gates(model: nn.Module) -> None:
    """Clamp every gate to [0, 1] in place (after each optimizer step), adding what is cut off to its excess."""
    for m in attention_modules(model):
        if hasattr(m, "rlkv_gate"):
            g = m.rlkv_gate
            clamped = g.clamp(0.0, 1.0)
            getattr(m, EXCESS).add_((g - clamped).float())
            g.copy_(clamped)


def _spread(keys: np.ndarray, lo: float, hi: float, top_at_hi: bool) -> np.ndarray:
    """Distinct keys mapped in order into (lo, hi] (top_at_hi) or [lo, hi); equal keys stay equal."""
    uniq, rank = np.unique(keys, return_inverse=True)
    step = (hi - lo) / len(uniq)
    return lo + step * (rank + 1 if top_at_hi else rank)


def strict_scores(gates: np.ndarray, excess: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] ordered by (gate, excess): gates strictly inside (0, 1) are kept as they are; the
    heads held at 1 spread over (largest inner gate, 1] by their excess, those held at 0 over [0, smallest
    inner gate). Equal (gate, excess) pairs — no evidence either way — stay tied."""
    gates = np.asarray(gates, dtype=np.float64)
    excess = np.asarray(excess, dtype=np.float64)
    scores = gates.copy()
    inner = gates[(gates > 0) & (gates < 1)]
    hi = float(inner.max()) if inner.size else 0.5
    lo = float(inner.min()) if inner.size else 0.5
    top, bottom = gates >= 1, gates <= 0
    if top.any():
        scores[top] = _spread(excess[top], hi, 1.0, top_at_hi=True)
    if bottom.any():
        scores[bottom] = _spread(excess[bottom], 0.0, lo, top_at_hi=False)
    return scores.astype(np.float32)


def gate_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gate-only state dict: layer index → gate, and → excess."""
    state = {f"layer.{i}": g.detach().cpu().clone() for i, g in enumerate(gate_parameters(model))}
    state.update({f"excess.{i}": e.detach().cpu().clone() for i, e in enumerate(_excess_buffers(model))})
    return state


def save_gates(model: nn.Module, directory: str | Path) -> Path:
    """Write the gates (only) into ``directory/rlkv_gates.pt``."""
    path = Path(directory) / GATES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(gate_state(model), path)
    return path


@torch.no_grad()
def load_gates(model: nn.Module, directory_or_file: str | Path) -> None:
    """Load gates written by :func:`save_gates` (a checkpoint directory or the file itself)."""
    path = Path(directory_or_file)
    if path.is_dir():
        path = path / GATES_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    gates = gate_parameters(model)
    n_saved = sum(k.startswith("layer.") for k in state)
    if n_saved != len(gates):
        raise ValueError(f"{path} holds {n_saved} layers of gates, the model has {len(gates)}")
    for i, (g, e) in enumerate(zip(gates, _excess_buffers(model), strict=True)):
        g.copy_(state[f"layer.{i}"].to(g.device, g.dtype))
        e.copy_(state.get(f"excess.{i}", torch.zeros_like(e)).to(e.device, e.dtype))

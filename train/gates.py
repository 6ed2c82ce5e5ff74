"""Per-KV-head gates on a transformers model: install, read, write, clamp, save and load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlkv_edge.train.attention import ATTN_NAME, BACKENDS, register

GATES_FILE = "rlkv_gates.pt"


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


@torch.no_grad()
def clamp_gates(model: nn.Module) -> None:
    """Clamp every gate to [0, 1] in place (after each optimizer step)."""
    for g in gate_parameters(model):
        g.clamp_(0.0, 1.0)


def gate_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gate-only state dict (layer index → gate)."""
    return {f"layer.{i}": g.detach().cpu().clone() for i, g in enumerate(gate_parameters(model))}


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
    if len(state) != len(gates):
        raise ValueError(f"{path} holds {len(state)} layers of gates, the model has {len(gates)}")
    for i, g in enumerate(gates):
        g.copy_(state[f"layer.{i}"].to(g.device, g.dtype))

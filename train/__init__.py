"""rlkv_edge.train: gated mixed attention, fused Triton kernel and the trainers that learn head scores
(GRPO in ``trainer``, distillation in ``distill``, the training-free ablation baseline in ``ablation``).

Needs the ``train`` extra (torch, transformers, trl). Submodules import torch; this package itself does
not, so ``rlkv_edge.cli.train`` can be registered with the core CLI on machines without torch. The
``rlkv`` attention implementation is registered with transformers when ``rlkv_edge.train.attention`` is
imported (and again by ``install_gates``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ATTN_NAME": "attention",
    "reference_mixed_attention": "attention",
    "register": "attention",
    "clamp_gates": "gates",
    "get_gates": "gates",
    "install_gates": "gates",
    "load_gates": "gates",
    "save_gates": "gates",
    "set_gates": "gates",
    "TrainConfig": "config",
    "train_heads": "trainer",
    "RLKVGRPOTrainer": "trainer",
    "strict_scores": "gates",
    "train_distill": "distill",
    "RLKVDistillTrainer": "distill",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the public names lazily (they need torch)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"rlkv_edge.train.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rlkv_edge.train' has no attribute {name!r}")

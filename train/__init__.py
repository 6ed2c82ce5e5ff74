"""rlkv_edge.train: gated mixed attention, fused Triton kernel and the GRPO trainer that learns head scores.

Needs the ``train`` extra (torch, transformers, trl). Importing this package registers the ``rlkv``
attention implementation with transformers.
"""

from __future__ import annotations

from rlkv_edge.train.attention import ATTN_NAME, reference_mixed_attention, register
from rlkv_edge.train.gates import clamp_gates, get_gates, install_gates, load_gates, save_gates, set_gates

__all__ = [
    "ATTN_NAME",
    "clamp_gates",
    "get_gates",
    "install_gates",
    "load_gates",
    "reference_mixed_attention",
    "register",
    "save_gates",
    "set_gates",
]

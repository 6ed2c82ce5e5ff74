"""Training-free head scores (issue 14, the baseline any learned method must beat): the KL each head's
ablation alone causes — that one KV head local (sink + window), every other head full — over a
calibration text, against the model with every head full. Higher = the head matters more.

Uses the same gated attention as training (gates at 1 = the model itself, a gate at 0 = the local rule),
so the scores mean the same thing at deploy time. One forward pass per head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rlkv_edge.train.gates import install_gates, set_gates

METHOD = "ablation-kl"


@torch.no_grad()
def ablation_kl(
    model: Any,
    input_ids: torch.Tensor,
    *,
    sink: int,
    window: int,
    backend: str = "reference",
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """[L, H] mean KL(all full ‖ head (l, h) local) over the positions of input_ids ([1, T])."""
    gates = install_gates(model, sink=sink, window=window, backend=backend)
    model.eval()
    shape = (len(gates), int(gates[0].numel()))
    set_gates(model, 1.0)
    # ref: [T, V] log-probabilities of the model with every head full
    ref = torch.log_softmax(model(input_ids=input_ids).logits[0].float(), dim=-1)
    p_ref = ref.exp()
    kl = np.zeros(shape, dtype=np.float64)
    for layer in range(shape[0]):
        for head in range(shape[1]):
            mask = np.ones(shape, dtype=np.float32)
            mask[layer, head] = 0.0
            set_gates(model, mask)
            out = torch.log_softmax(model(input_ids=input_ids).logits[0].float(), dim=-1)
            kl[layer, head] = float((p_ref * (ref - out)).sum(-1).clamp_min(0).mean())
        if log:
            log(f"layer {layer}: KL per head " + " ".join(f"{v:.2e}" for v in kl[layer]))
    set_gates(model, 1.0)
    return kl


def scores_from_kl(kl: np.ndarray) -> np.ndarray:
    """KL scaled into [0, 1] by the largest one (order kept; a heads file holds scores in [0, 1])."""
    top = float(kl.max())
    return (kl / top if top > 0 else np.zeros_like(kl)).astype(np.float32)


def ablation_heads(cfg: Any, model: Any = None, tokenizer: Any = None, log: Callable[[str], None] | None = None) -> Any:
    """`rlkv-edge train --objective ablation`: score every head on cfg.text and write cfg.out (heads.json)."""
    from pathlib import Path

    from rlkv_edge.evaluate import read_text_file
    from rlkv_edge.heads import save_heads
    from rlkv_edge.train.trainer import heads_from_model, load_model_and_tokenizer

    if model is None:
        model, tokenizer = load_model_and_tokenizer(cfg)
    text = Path(cfg.text)
    input_ids = tokenizer(read_text_file(text), return_tensors="pt").input_ids[:, : cfg.text_tokens]
    backend = cfg.backend if cfg.backend != "auto" else ("triton" if input_ids.is_cuda else "reference")
    kl = ablation_kl(model, input_ids.to(model.device), sink=cfg.sink, window=cfg.window, backend=backend, log=log)
    training = {"ablation_kl": kl.tolist(), "calibration_text": text.name, "n_tokens": int(input_ids.shape[1])}
    heads = heads_from_model(model, cfg, training, scores=scores_from_kl(kl), method=METHOD)
    save_heads(heads, cfg.out)
    return heads

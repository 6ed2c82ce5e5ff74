"""Hook for the train ↔ runtime agreement test: logits of a GGUF model under the trainer's attention.

``gguf_gated_logits`` loads a (tiny, F32) GGUF with transformers, sets binary gates from a heads file's
scores with the shared mask rule (``rlkv_edge.masks``) and returns the logits of one token sequence; the
patched llama.cpp runtime on the converted GGUF at the same sparsity must give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlkv_edge.masks import full_head_mask
from rlkv_edge.train.gates import install_gates, set_gates


def load_gguf_model(path: str | Path) -> torch.nn.Module:
    """A float32 transformers causal LM from a GGUF file (dequantised)."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()


def binary_gates(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Gates of the deployed mask: 1.0 for full heads, 0.0 for local heads (original head order)."""
    return full_head_mask(np.asarray(scores), sparsity).astype(np.float32)


@torch.no_grad()
def gguf_gated_logits(
    gguf_path: str | Path,
    scores: np.ndarray,
    sparsity: float,
    sink: int,
    window: int,
    tokens: list[int],
    model: torch.nn.Module | None = None,
) -> np.ndarray:
    """Logits [T, V] (float64) of tokens under binary gates at the given sparsity (reference backend)."""
    model = model if model is not None else load_gguf_model(gguf_path)
    install_gates(model, sink=sink, window=window, backend="reference")
    set_gates(model, binary_gates(scores, sparsity))
    ids = torch.tensor([tokens], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    return logits.double().numpy()

"""Tiny random transformers models and a character-level tokenizer for the tests (from a config, offline)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ARCHS = ("llama", "qwen2")


def tiny_model(
    arch: str = "llama",
    vocab_size: int = 128,
    hidden_size: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    max_positions: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised float32 llama or qwen2 causal LM (SDPA attention, eval mode)."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_head_kv,
        max_position_embeddings=max_positions,
        attn_implementation="sdpa",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    with torch.no_grad():  # larger weights than the default init, so attention patterns are far from uniform
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
            if name.endswith("q_proj.bias") or name.endswith("k_proj.bias"):
                p.normal_(0.0, 0.5)
    return model.eval()


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids as generate() derives them: ordinal among the non-pad tokens (pads get 1)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


TINY_CHARS = " 0123456789+-*/=().,:?!\\{}^$#\nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer (< 128 tokens, no chat template) built offline with `tokenizers`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(TINY_CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def saved_tiny_model(directory: Any, arch: str = "qwen2") -> Any:
    """A tiny model and its tokenizer saved into directory (a path for the CLI's MODEL argument)."""
    tiny_model(arch).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory

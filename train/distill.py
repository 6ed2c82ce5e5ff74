"""The distillation objective (DuoAttention's, on our gates): keep the gated model's next-token distribution
close to the full-cache model's on a long text. No generation, so it is cheap on a CPU.

    loss = KL(p_full ‖ p_gated) averaged over the text's positions + β′·mean|α|

The teacher is the same model with every gate at 1 (one extra no-grad forward pass per step). The L1 term is
the GRPO recipe's adaptive penalty, β′ = 1[r̄ > τ]·β·(e^{r̄} − 1), with r̄ the top-1 agreement of the gated
model with the teacher on the batch: gates are pushed down only while the gated model still agrees with the
full one. Same gates, attention kernels, clamping, gate-only checkpoints and heads.json as `--objective grpo`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from rlkv_edge.errors import DataError
from rlkv_edge.heads import HeadScores, save_heads
from rlkv_edge.train.config import TrainConfig
from rlkv_edge.train.gates import clamp_gates, full_gates
from rlkv_edge.train.trainer import (
    ClampGatesCallback,
    GateCheckpoints,
    add_gate_penalty,
    gate_training_args,
    heads_from_model,
    load_model_and_tokenizer,
    penalty_weight,
    place_model,
    remove_printer,
    resolve_resume,
)

METHOD = "rlkv-distill"


def distill_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean KL(teacher ‖ student) over all positions, and the top-1 agreement. Both [B, T, V]."""
    student = torch.log_softmax(student_logits.float(), dim=-1)  # [B, T, V]
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student)).sum(-1)  # [B, T]
    agree = (student.argmax(-1) == teacher_logprobs.argmax(-1)).float().mean()
    return kl.mean(), float(agree)


def text_chunks(token_ids: list[int], n_tokens: int, min_tokens: int) -> list[list[int]]:
    """Consecutive chunks of n_tokens (one shorter chunk when the text is shorter); DataError when the text
    has no more than min_tokens tokens (S + W: local heads would then see everything)."""
    if len(token_ids) <= min_tokens:
        raise DataError(
            f"--text has {len(token_ids)} tokens; distillation needs more than S + W = {min_tokens} "
            "(a local head sees every earlier token of a shorter text)"
        )
    if len(token_ids) < n_tokens:
        return [token_ids]
    return [token_ids[i : i + n_tokens] for i in range(0, len(token_ids) - n_tokens + 1, n_tokens)]


def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack equal-length chunks into input_ids [B, T]."""
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)}


class RLKVDistillTrainer(GateCheckpoints, Trainer):
    """A Trainer whose loss is KL(full ‖ gated) + the adaptive L1 penalty; only the gates train."""

    def __init__(self, *args: Any, rlkv_beta: float = 1e-3, rlkv_tau: float = 0.5, **kwargs: Any) -> None:
        """Same arguments as Trainer, plus the penalty's β and τ."""
        super().__init__(*args, **kwargs)
        self.rlkv_beta, self.rlkv_tau = rlkv_beta, rlkv_tau
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.add_callback(ClampGatesCallback())

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """KL(full ‖ gated) + β′·mean|α| on one batch of text chunks."""
        loss = self._compute_loss(model, inputs)
        return (loss, None) if return_outputs else loss

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The loss, with the teacher from a no-grad pass with every gate at 1."""
        mode = "train" if model.training else "eval"
        input_ids = inputs["input_ids"]  # [B, T]
        with torch.no_grad(), full_gates(model):
            teacher = torch.log_softmax(model(input_ids=input_ids).logits.float(), dim=-1)  # [B, T, V]
        kl, top1 = distill_kl(model(input_ids=input_ids).logits, teacher)
        self._metrics[mode]["rlkv/kl"].append(kl.item())
        self._metrics[mode]["rlkv/top1"].append(top1)
        weight = penalty_weight(top1, self.rlkv_beta, self.rlkv_tau)
        return add_gate_penalty(kl, model, weight, self._metrics[mode])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of this logging interval's rlkv/* metrics to the Trainer's log."""
        mode = "train" if self.model is not None and self.model.training else "eval"
        logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}}
        self._metrics[mode].clear()
        super().log(logs, start_time)


def distill_args(cfg: TrainConfig, **overrides: Any) -> TrainingArguments:
    """TrainingArguments for the recipe: constant AdamW on the gates, one text chunk per micro-batch."""
    kwargs = gate_training_args(cfg)
    kwargs.update(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def train_distill(
    cfg: TrainConfig,
    model: PreTrainedModel | None = None,
    tokenizer: Any = None,
    callbacks: list[TrainerCallback] | None = None,
    print_logs: bool = True,
    **arg_overrides: Any,
) -> tuple[RLKVDistillTrainer, HeadScores]:
    """`rlkv-edge train --objective distill`: load, install gates, distil on cfg.text, write heads.json."""
    import datasets

    from rlkv_edge.evaluate import read_text_file
    from rlkv_edge.train.gates import install_gates

    torch.manual_seed(cfg.seed)
    assert cfg.text is not None  # TrainConfig checks it for this objective
    text = Path(cfg.text)
    body = read_text_file(text)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(cfg)
    model = place_model(model)
    chunks = text_chunks(list(tokenizer(body).input_ids), cfg.text_tokens, cfg.sink + cfg.window)
    install_gates(model, sink=cfg.sink, window=cfg.window, backend=cfg.backend)
    trainer = RLKVDistillTrainer(
        model=model,
        args=distill_args(cfg, **arg_overrides),
        train_dataset=datasets.Dataset.from_dict({"input_ids": chunks}),
        data_collator=collate,
        callbacks=callbacks,
        rlkv_beta=cfg.beta,
        rlkv_tau=cfg.tau,
    )
    if not print_logs:
        remove_printer(trainer)
    trainer.train(resume_from_checkpoint=resolve_resume(cfg))
    clamp_gates(model)
    last = next((h for h in reversed(trainer.state.log_history) if "rlkv/kl" in h), {})
    extra = {
        "text": text.name,
        "n_chunks": len(chunks),
        "chunk_tokens": len(chunks[0]),
        "steps_done": int(trainer.state.global_step),
        "final_kl": last.get("rlkv/kl"),
        "final_top1": last.get("rlkv/top1"),
    }
    heads = heads_from_model(model, cfg, extra, method=METHOD)
    if trainer.accelerator.is_main_process:
        save_heads(heads, cfg.out)
    return trainer, heads

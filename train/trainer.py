"""RLKV on TRL: a GRPOTrainer whose only trainable parameters are the head gates.

Loss = GRPO loss + β′·mean|α| with β′ = 1[r̄ > τ]·β·(e^{r̄} − 1), r̄ the batch's mean correctness reward
(the first reward function). Gates are clamped to [0, 1] after every optimizer step, and checkpoints hold
only the gates (plus the Trainer's optimizer/scheduler/RNG state), so they are small and resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from rlkv_edge.heads import HeadScores, save_heads
from rlkv_edge.metadata import gguf_fingerprint
from rlkv_edge.train.config import TrainConfig
from rlkv_edge.train.gates import (
    clamp_gates,
    gate_parameters,
    get_excess,
    get_gates,
    load_gates,
    save_gates,
    strict_scores,
)

METHOD = "rlkv-grpo"


def penalty_weight(reward_mean: float, beta: float, tau: float) -> float:
    """Adaptive L1 weight β′ = 1[r̄ > τ]·β·(e^{r̄} − 1)."""
    if not math.isfinite(reward_mean) or reward_mean <= tau:
        return 0.0
    return beta * math.expm1(reward_mean)


def add_gate_penalty(
    loss: torch.Tensor, model: Any, weight: float, metrics: dict[str, list[float]], normalizer: float = 1.0
) -> torch.Tensor:
    """loss + weight·mean|α| / normalizer, recording the penalty weight and the gate statistics in metrics."""
    gates = torch.cat([g.reshape(-1) for g in gate_parameters(model)])  # [L·H]
    g = gates.detach()
    metrics["rlkv/penalty_weight"].append(weight)
    metrics["rlkv/mean_gate"].append(g.mean().item())
    metrics["rlkv/heads_below_half"].append(float((g < 0.5).sum().item()))
    return loss + weight * gates.abs().mean().to(loss.dtype) / normalizer


def place_model(model: PreTrainedModel) -> PreTrainedModel:
    """The model on the GPU when one is available (accelerate places it itself under `accelerate launch`)."""
    if torch.cuda.is_available() and model.device.type == "cpu" and "LOCAL_RANK" not in os.environ:
        model = model.to("cuda")  # type: ignore[arg-type]
    return model


def remove_printer(trainer: Any) -> None:
    """Drop the Trainer's printed log dicts (a live display replaces them)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


class ClampGatesCallback(TrainerCallback):
    """Clamp the gates to [0, 1] right after every optimizer step."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        """Clamp in place."""
        if model is not None:
            clamp_gates(model)


class GateCheckpoints:
    """Trainer mixin: checkpoints hold only the gates and their clamp excess (the weights never change)."""

    args: Any
    accelerator: Any
    model: Any

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save only the gates."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and output_dir is not None:
            save_gates(self.accelerator.unwrap_model(self.model), output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load the gates of a checkpoint written by :meth:`_save`."""
        load_gates(self.accelerator.unwrap_model(model if model is not None else self.model), resume_from_checkpoint)


class RLKVGRPOTrainer(GateCheckpoints, GRPOTrainer):
    """GRPOTrainer + adaptive L1 penalty on the gates, gate clamping and gate-only checkpoints."""

    def __init__(self, *args: Any, rlkv_beta: float = 1e-3, rlkv_tau: float = 0.5, **kwargs: Any) -> None:
        """Same arguments as GRPOTrainer, plus the penalty's β and τ."""
        super().__init__(*args, **kwargs)
        self.rlkv_beta, self.rlkv_tau = rlkv_beta, rlkv_tau
        self.rlkv_reward_mean = float("nan")
        self.add_callback(ClampGatesCallback())

    def _generate_and_score_completions(self, inputs: Any) -> dict[str, Any]:
        """TRL's rollout; also remembers r̄, the mean first (correctness) reward over all processes."""
        output: dict[str, Any] = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model is not None and self.model.training else "eval"
        values = self._metrics[mode].get(f"rewards/{self.reward_func_names[0]}/mean")
        self.rlkv_reward_mean = float(values[-1]) if values else float("nan")
        return output

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """GRPO loss + β′·mean|α| (scaled for gradient accumulation like TRL's own terms)."""
        loss: torch.Tensor = super()._compute_loss(model, inputs)
        mode = "train" if self.model is not None and self.model.training else "eval"
        weight = penalty_weight(self.rlkv_reward_mean, self.rlkv_beta, self.rlkv_tau)
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return add_gate_penalty(loss, model, weight, self._metrics[mode], normalizer)


def use_bf16(cfg: TrainConfig) -> bool:
    """Train in bf16: asked for, or `auto` on a GPU that supports it."""
    return cfg.dtype == "bfloat16" or (
        cfg.dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    )


def gate_training_args(cfg: TrainConfig) -> dict[str, Any]:
    """The TrainingArguments every objective shares: constant AdamW on the gates, logging and checkpoints."""
    return dict(
        output_dir=cfg.output_dir,
        max_steps=cfg.steps,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        save_steps=cfg.save_steps,
        save_strategy="steps",
        logging_steps=1,
        report_to="none",
        bf16=use_bf16(cfg),
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )


def grpo_args(cfg: TrainConfig, **overrides: Any) -> GRPOConfig:
    """GRPOConfig for the recipe: no KL, constant AdamW on the gates, group size G, P prompts per step."""
    kwargs = gate_training_args(cfg)
    kwargs.update(
        beta=0.0,
        num_generations=cfg.group_size,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.grad_accum_steps(),
        max_completion_length=cfg.max_completion_tokens,
        temperature=cfg.temperature,
        loss_type=cfg.loss_type,
        log_completions=False,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def model_fingerprint(cfg: TrainConfig, model: PreTrainedModel) -> str:
    """sha256 of the GGUF file's first 16 MiB and size (MODEL a .gguf file, or --gguf-file), or of the model config
    for HF models."""
    h = hashlib.sha256()
    if cfg.model.lower().endswith(".gguf") and Path(cfg.model).is_file():
        return gguf_fingerprint(cfg.model)
    if cfg.gguf_file:
        path = Path(cfg.gguf_file) if os.path.isabs(cfg.gguf_file) else Path(cfg.model) / cfg.gguf_file
        if not path.exists():
            path = Path(cfg.gguf_file)
        if path.exists():
            return gguf_fingerprint(path)
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    return "sha256-config:" + h.hexdigest()


def model_name(cfg: TrainConfig) -> str:
    """The model as heads.json names it: a GGUF's file name, a local HF folder's name, or the hub name as given."""
    if cfg.gguf_file:
        return os.path.basename(cfg.gguf_file)
    if Path(cfg.model).exists():
        return Path(cfg.model).resolve().name
    return cfg.model


def heads_from_model(
    model: PreTrainedModel,
    cfg: TrainConfig,
    training: dict[str, Any] | None = None,
    scores: np.ndarray | None = None,
    method: str = METHOD,
) -> HeadScores:
    """The trained gates as strict scores (or other `scores`) as a HeadScores in the model's original head order."""
    mc = model.config
    training = dict(training or {})
    if scores is None:  # the gates, plus the clamp excess that orders the heads held at 0 or 1
        gates, excess = get_gates(model), get_excess(model)
        scores = strict_scores(gates, excess)
        training.update(gates=gates.tolist(), clamp_excess=excess.tolist())
    return HeadScores(
        scores=scores,
        sink_size=cfg.sink,
        window_size=cfg.window,
        method=method,
        model={
            "architecture": str(getattr(mc, "model_type", None)),
            "n_layer": int(mc.num_hidden_layers),
            "n_head": int(mc.num_attention_heads),
            "n_head_kv": int(getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads),
            "name": model_name(cfg),
            "fingerprint": model_fingerprint(cfg, model),
        },
        training={**cfg.provenance(), **training},
    )


def write_heads(model: PreTrainedModel, cfg: TrainConfig, training: dict[str, Any] | None = None) -> HeadScores:
    """Write heads.json (cfg.out) from the model's gates and return it."""
    heads = heads_from_model(model, cfg, training)
    save_heads(heads, cfg.out)
    return heads


def load_model_and_tokenizer(cfg: TrainConfig) -> tuple[PreTrainedModel, Any]:
    """Load a causal LM and its tokenizer from an HF directory/name, or from a GGUF file (dequantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf = cfg.model, cfg.gguf_file
    if gguf is None and source.endswith(".gguf"):
        source, gguf = str(Path(source).parent), Path(source).name
    dtype: Any = {
        "auto": "auto",
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
        "float16": torch.float16,
    }[cfg.dtype]
    if gguf is not None and dtype == "auto":  # GGUF weights are dequantised; pick a training dtype ourselves
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16_ok else torch.float32
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    model_kwargs = dict(kwargs)
    if gguf:  # dense weights: GGUF matmul kernels are inference-only and Trainer refuses "quantized" models
        from transformers import GgufConfig

        model_kwargs["quantization_config"] = GgufConfig(gguf_file=gguf, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **model_kwargs)  # type: ignore[arg-type]
    if gguf and getattr(model, "is_quantized", False):
        if any(not p.is_floating_point() for p in model.parameters()):
            raise RuntimeError(f"{gguf} loaded with packed (non-float) weights; cannot train gates on it")
        setattr(model, "is_quantized", False)  # noqa: B010  (dense float weights: nothing quantized is left)
        if hasattr(model, "hf_quantizer"):
            del model.hf_quantizer
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or source, **({} if cfg.tokenizer else kwargs))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def resolve_resume(cfg: TrainConfig) -> str | None:
    """The checkpoint to resume from: a path, or 'latest' (the newest checkpoint in output_dir, if any)."""
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(cfg.output_dir) if os.path.isdir(cfg.output_dir) else None
    if not os.path.isdir(cfg.resume):
        raise FileNotFoundError(f"checkpoint directory not found: {cfg.resume}")
    return cfg.resume


def train_heads(
    cfg: TrainConfig,
    model: PreTrainedModel | None = None,
    tokenizer: Any = None,
    train_dataset: Any = None,
    callbacks: list[TrainerCallback] | None = None,
    reward_funcs: list[Any] | None = None,
    print_logs: bool = True,
    **grpo_overrides: Any,
) -> tuple[RLKVGRPOTrainer, HeadScores]:
    """The recipe: load, install gates, build the data, run GRPO (resuming if asked), write heads.json."""
    from rlkv_edge.scoring import get_reward
    from rlkv_edge.train.data import load_problems, parse_buckets, self_distill, to_dataset
    from rlkv_edge.train.gates import install_gates

    torch.manual_seed(cfg.seed)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(cfg)
    model = place_model(model)
    reward = get_reward(cfg.reward)
    extra: dict[str, Any] = {}
    if train_dataset is None:
        conversational = cfg.chat if cfg.chat is not None else bool(getattr(tokenizer, "chat_template", None))
        problems = load_problems(cfg.dataset, n=cfg.n_problems, seed=cfg.seed)
        if cfg.self_distill:
            n_before = len(problems)
            problems = self_distill(
                model, tokenizer, problems, reward, parse_buckets(cfg.buckets),
                max_new_tokens=cfg.distill_max_tokens, conversational=conversational, seed=cfg.seed,
                template=cfg.prompt_template,
            )  # fmt: skip
            extra["self_distill"] = {"candidates": n_before, "kept": len(problems)}
            if not problems:
                raise RuntimeError("self-distillation kept no problem: the model solved none of them greedily")
        train_dataset = to_dataset(problems, conversational=conversational, template=cfg.prompt_template)
        extra["n_problems"] = len(problems)
    install_gates(model, sink=cfg.sink, window=cfg.window, backend=cfg.backend)
    trainer = RLKVGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs or [reward],
        args=grpo_args(cfg, **grpo_overrides),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
        rlkv_beta=cfg.beta,
        rlkv_tau=cfg.tau,
    )
    if not print_logs:
        remove_printer(trainer)
    trainer.train(resume_from_checkpoint=resolve_resume(cfg))
    clamp_gates(model)
    extra.update(steps_done=int(trainer.state.global_step), final_reward_mean=trainer.rlkv_reward_mean)
    heads = heads_from_model(model, cfg, extra)
    if trainer.accelerator.is_main_process:
        save_heads(heads, cfg.out)
    return trainer, heads

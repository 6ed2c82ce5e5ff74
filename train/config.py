"""The training recipe (paper defaults, docs/DESIGN.md §5) as one dataclass."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from rlkv_edge.train.data import PROMPT_TEMPLATE

OBJECTIVES = ("grpo", "distill", "ablation")


@dataclass
class TrainConfig:
    """Everything `rlkv-edge train` needs; defaults are the paper's recipe."""

    model: str
    dataset: str = "reasoning-gym:basic_arithmetic"
    out: str = "heads.json"
    output_dir: str = "rlkv-train"
    gguf_file: str | None = None
    tokenizer: str | None = None
    steps: int = 185
    group_size: int = 4
    prompts_per_step: int = 32
    micro_batch_size: int = 8
    lr: float = 1e-2
    beta: float = 1e-3
    tau: float = 0.5
    sink: int = 128
    window: int = 256
    max_completion_tokens: int = 4096
    temperature: float = 1.0
    seed: int = 0
    resume: str | None = None
    save_steps: int = 20
    n_problems: int | None = None
    reward: str = "math"
    self_distill: bool = False
    buckets: str = "0-2048:600,2048-4096:600,4096-6144:1000,6144-8192:800"
    distill_max_tokens: int = 8192
    backend: str = "auto"
    dtype: str = "auto"
    loss_type: str = "grpo"
    max_grad_norm: float = 1.0
    chat: bool | None = None
    prompt_template: str = PROMPT_TEMPLATE
    objective: str = "grpo"  # grpo (RL on a verifiable reward) | distill | ablation (both need text)
    text: str | None = None  # the text distill trains on / ablation calibrates on
    text_tokens: int = 768  # distill: tokens per chunk; ablation: tokens of the text used
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check the knobs that would otherwise fail deep inside TRL."""
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (GRPO compares completions within a group)")
        if self.steps < 1 or self.prompts_per_step < 1 or self.micro_batch_size < 1:
            raise ValueError("steps, prompts_per_step and micro_batch_size must be positive")
        if self.sink < 0 or self.window < 1:
            raise ValueError("sink must be >= 0 and window >= 1")
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain {question}")
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError("tau must be in [0, 1] (it is compared with a mean 0/1 reward)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective in ("distill", "ablation") and (self.text is None or self.text_tokens < 2):
            raise ValueError(f"--objective {self.objective} needs --text FILE (a long text) and --text-tokens >= 2")

    @property
    def world_size(self) -> int:
        """Number of processes (``accelerate launch`` sets WORLD_SIZE)."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def completions_per_step(self) -> int:
        """Completions per optimizer step: prompts per step × group size."""
        return self.prompts_per_step * self.group_size

    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step on each process."""
        per_process = self.completions_per_step // self.world_size
        if per_process * self.world_size != self.completions_per_step or per_process % self.micro_batch_size:
            raise ValueError(
                f"prompts_per_step × group_size = {self.completions_per_step} must split evenly into "
                f"{self.world_size} process(es) × micro batches of {self.micro_batch_size}"
            )
        return per_process // self.micro_batch_size

    def provenance(self) -> dict[str, Any]:
        """The recipe as JSON-safe training provenance for heads.json."""
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        return d

"""`rlkv-edge train`: learn per-head scores with GRPO, distillation or ablation (imports torch only when it runs)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rlkv_edge.cli.options import Backend, Dtype, Objective, catalog_name, plain_model_path
from rlkv_edge.errors import UsageError
from rlkv_edge.train.config import TrainConfig

console = Console()
_D = TrainConfig(model="")


# (column, log key, format) of the live display, per objective: what tells the user training works
_QUALITY = {
    "grpo": [("mean reward", "reward", ".3f")],
    "distill": [("KL to full", "rlkv/kl", ".4f"), ("top-1", "rlkv/top1", ".3f")],
}
_GATES = [("mean gate", "rlkv/mean_gate", ".4f"), ("heads α<0.5", "rlkv/heads_below_half", ".0f"),
          ("penalty β′", "rlkv/penalty_weight", ".2e")]  # fmt: skip


def _status_table(row: dict[str, Any], total: int, started: float, objective: str = "grpo") -> Table:
    """One-row Rich table of the training state."""
    t = Table(title=f"rlkv-edge train ({objective})", expand=False)
    columns = _QUALITY[objective] + _GATES
    for col in ["step", *(c for c, _, _ in columns), "elapsed"]:
        t.add_column(col, justify="right")

    def f(key: str, fmt: str) -> str:
        v = row.get(key)
        return format(v, fmt) if isinstance(v, int | float) else "-"

    t.add_row(f"{row.get('step', 0)}/{total}", *(f(k, fmt) for _, k, fmt in columns), f"{time.time() - started:.0f}s")
    return t


def _display_callback(total: int, objective: str = "grpo") -> Any:
    """A TrainerCallback showing a live Rich table on the main process (one plain line per step when the
    output is not a terminal, e.g. a log file, where a live display would print nothing until the end)."""
    from transformers import TrainerCallback

    class RichDisplay(TrainerCallback):  # type: ignore[misc]
        """Live step / reward / gate display."""

        def __init__(self) -> None:
            self.live: Live | None = None
            self.started = time.time()
            self.last: dict[str, Any] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                row = {"step": state.global_step}
                self.live = Live(_status_table(row, total, self.started, objective), console=console)
                self.live.start()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            if self.live is not None and logs and "rlkv/mean_gate" in logs:
                self.last = {**logs, "step": state.global_step}
                self.live.update(_status_table(self.last, total, self.started, objective))
                if not console.is_terminal:
                    values = ", ".join(
                        f"{name} {format(self.last[key], fmt)}"
                        for name, key, fmt in _QUALITY[objective] + _GATES
                        if isinstance(self.last.get(key), int | float)
                    )
                    print(f"step {state.global_step}/{total}: {values}", flush=True)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.live is not None:
                self.live.stop()
                self.live = None

    return RichDisplay()


def _summary(heads: Any, cfg: TrainConfig) -> None:
    """Print the learned gates per layer and where heads.json went."""
    scores = heads.scores
    t = Table(title=f"learned gates ({heads.method}, S={cfg.sink}, W={cfg.window})")
    t.add_column("layer", justify="right")
    t.add_column("α per KV head")
    for i, row in enumerate(scores):
        t.add_row(str(i), " ".join(f"[{'green' if v >= 0.5 else 'red'}]{v:.3f}[/]" for v in row))
    console.print(t)
    n_low = int((scores < 0.5).sum())
    console.print(f"{n_low}/{scores.size} heads with α < 0.5, mean α {scores.mean():.4f}; wrote [bold]{cfg.out}[/bold]")


def train(
    model: str = typer.Argument(..., help="HF model directory or name, or a .gguf file."),
    dataset: str = typer.Option(_D.dataset, help="reasoning-gym:NAME, a .jsonl/.parquet file, or an HF dataset."),
    out: str = typer.Option(_D.out, help="Where to write heads.json."),
    output_dir: str = typer.Option(_D.output_dir, help="Checkpoint directory (gate-only checkpoints)."),
    gguf_file: str | None = typer.Option(None, help="GGUF file inside MODEL (a directory or hub name)."),
    tokenizer: str | None = typer.Option(None, help="Tokenizer to use instead of MODEL's."),
    steps: int = typer.Option(_D.steps, help="Optimizer steps."),
    group_size: int = typer.Option(_D.group_size, help="Completions per prompt (GRPO group)."),
    prompts_per_step: int = typer.Option(_D.prompts_per_step, help="Prompts per optimizer step."),
    micro_batch_size: int = typer.Option(_D.micro_batch_size, help="Completions per forward/backward pass."),
    lr: float = typer.Option(_D.lr, help="Learning rate (constant AdamW on the gates)."),
    beta: float = typer.Option(_D.beta, help="L1 penalty β."),
    tau: float = typer.Option(_D.tau, help="Reward threshold τ above which the penalty applies."),
    sink: int = typer.Option(_D.sink, help="Sink tokens S of local heads during training."),
    window: int = typer.Option(_D.window, help="Recent window W of local heads during training."),
    max_completion_tokens: int = typer.Option(_D.max_completion_tokens, help="Max tokens per completion."),
    temperature: float = typer.Option(_D.temperature, help="Sampling temperature."),
    seed: int = typer.Option(_D.seed, help="Random seed."),
    resume: str | None = typer.Option(None, help="Checkpoint directory to resume from, or 'latest'."),
    save_steps: int = typer.Option(_D.save_steps, help="Save a gate checkpoint every N steps."),
    n_problems: int | None = typer.Option(None, help="Number of problems to load (default: all / 1000 generated)."),
    reward: str = typer.Option(_D.reward, help="math | exact | module:function."),
    self_distill: bool = typer.Option(False, help="Keep only problems the unmodified model solves greedily."),
    buckets: str = typer.Option(_D.buckets, help="Self-distillation buckets 'lo-hi:count,...' (solution tokens)."),
    backend: Annotated[Backend, typer.Option(help="Attention kernel.")] = _D.backend,  # type: ignore[assignment]
    dtype: Annotated[Dtype, typer.Option(help="Weights' dtype while training (auto: the model's).")] = _D.dtype,  # type: ignore[assignment]
    chat: bool | None = typer.Option(None, help="Use the chat template (default: when the tokenizer has one)."),
    prompt_template: str = typer.Option(
        _D.prompt_template, help="User message around each problem; must contain {question}."
    ),
    objective: Annotated[
        Objective,
        typer.Option(
            help="grpo: RL on a verifiable reward (--dataset, --reward); distill: keep the gated model's "
            "next-token distribution close to the full model's on --text (no generation, cheap on a CPU); "
            "ablation: training-free, the KL each head's ablation alone causes on --text (one forward pass per head).",
        ),
    ] = _D.objective,  # type: ignore[assignment]
    text: str | None = typer.Option(None, help="The long text of --objective distill / ablation."),
    text_tokens: int = typer.Option(
        _D.text_tokens, help="distill: tokens per training chunk; ablation: tokens of --text used."
    ),
) -> None:
    """Learn per-head scores (GRPO, distillation or ablation) and write heads.json."""
    params = dict(locals())
    if catalog_name(model) is not None:
        params["model"] = str(plain_model_path(model))  # a catalog name: its plain GGUF, fetched on first use
    missing = [m for m in ("torch", "transformers", "trl") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"train needs {', '.join(missing)}: pip install 'rlkv-edge[train]'")
    try:
        cfg = TrainConfig(**params)
        cfg.extra["command"] = shlex.join(["rlkv-edge", *sys.argv[1:]])  # argv[1] is "train"
        cfg.grad_accum_steps()
    except ValueError as e:
        raise UsageError(str(e)) from None

    if cfg.objective == "ablation":
        from rlkv_edge.train.ablation import ablation_heads

        _summary(ablation_heads(cfg, log=lambda m: console.print(m, highlight=False)), cfg)
        return
    if cfg.objective == "distill":
        from rlkv_edge.train.distill import train_distill

        run: Any = train_distill
    else:
        from rlkv_edge.train.trainer import train_heads

        run = train_heads
    trainer, heads = run(cfg, callbacks=[_display_callback(cfg.steps, cfg.objective)], print_logs=False)
    if trainer.accelerator.is_main_process:
        _summary(heads, cfg)

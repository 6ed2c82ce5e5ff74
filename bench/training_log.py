"""A training run's per-step log (reward, mean gate, penalty weight, ...) as CSV and a plot.

    .venv/bin/python bench/training_log.py --training-log CHECKPOINT   # -> docs/training_log.csv, .png

CHECKPOINT is a `rlkv-edge train` checkpoint folder (it holds trainer_state.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LOG_COLUMNS = (
    ("step", "step"),
    ("reward", "rewards/recall_reward/mean"),
    ("reward_std", "reward_std"),
    ("mean_gate", "rlkv/mean_gate"),
    ("heads_below_half", "rlkv/heads_below_half"),
    ("penalty_weight", "rlkv/penalty_weight"),
    ("frac_reward_zero_std", "frac_reward_zero_std"),
    ("grad_norm", "grad_norm"),
    ("step_time_s", "step_time"),
)


def plot_training_log(rows: list[dict], rewards: list[float | None], png_path: Path) -> None:
    """Mean reward and mean gate per step, on two axes, to png_path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, rewards, "o-", label="mean reward")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward (0/1)")
    ax.set_ylim(-0.05, 1.05)
    ax2 = ax.twinx()
    ax2.plot(steps, [h["rlkv/mean_gate"] for h in rows], "s-", color="tab:red", label="mean gate α")
    ax2.set_ylabel("mean gate α", color="tab:red")
    fig.legend(loc="lower left", fontsize=8)
    ax.set_title("rlkv-edge train on SmolLM2-135M-Instruct (key recall, CPU)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path)


def export_training_log(checkpoint: Path, csv_path: Path, png_path: Path | None) -> int:
    """Per-step reward and mean gate from a checkpoint's trainer_state.json → CSV (+ plot)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    rows = [h for h in state["log_history"] if "rlkv/mean_gate" in h]
    rewards = [h.get("rewards/recall_reward/mean", h.get("reward")) for h in rows]  # other rewards log "reward"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write(",".join(name for name, _ in LOG_COLUMNS) + "\n")
        for h, reward in zip(rows, rewards, strict=True):
            vals = [h.get(key) if name != "reward" else reward for name, key in LOG_COLUMNS]
            f.write(",".join("" if v is None else f"{v:.6g}" for v in vals) + "\n")
    if png_path is not None:
        plot_training_log(rows, rewards, png_path)
    print(f"wrote {len(rows)} steps to {csv_path}" + (f" and {png_path}" if png_path else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Export a checkpoint's training log (docs/training_log.csv and .png by default)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--training-log", type=Path, required=True, metavar="CHECKPOINT", help="export CSV + plot")
    ap.add_argument("--csv", type=Path, default=Path("docs/training_log.csv"), help="CSV output")
    ap.add_argument("--png", type=Path, default=Path("docs/training_log.png"), help="plot output")
    args = ap.parse_args(argv)
    return export_training_log(args.training_log, args.csv, args.png)


if __name__ == "__main__":
    sys.exit(main())

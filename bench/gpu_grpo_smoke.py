"""A 3-step GRPO run of `rlkv-edge train` on a random-weight model of SmolLM2-135M's shape (bench/gpu_checks.sh).

    python bench/gpu_grpo_smoke.py

30 layers, 9 query / 3 KV heads of 64, hidden 576, a character tokenizer, 16 toy sums as the dataset. On a GPU
the gates run the fused Triton kernel under bf16 autocast; prints the training record of the heads file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_models import tiny_model, tiny_tokenizer


def main() -> None:
    """Write the model and dataset to a temporary directory, train 3 steps, print heads.json's record."""
    d = Path(tempfile.mkdtemp())
    model = tiny_model("llama", hidden_size=576, n_layer=30, n_head=9, n_head_kv=3, max_positions=2048)
    model.save_pretrained(d / "m")
    tiny_tokenizer().save_pretrained(d / "m")
    rows = [json.dumps({"question": f"{i}+{i}=?", "answer": str(2 * i)}) for i in range(16)]
    (d / "p.jsonl").write_text("\n".join(rows) + "\n")
    cmd = [sys.executable, "-c", "from rlkv_edge.cli import main; main()", "train", str(d / "m")]
    cmd += ["--dataset", str(d / "p.jsonl"), "--steps", "3", "--group-size", "4", "--prompts-per-step", "4"]
    cmd += ["--micro-batch-size", "8", "--max-completion-tokens", "256", "--sink", "16", "--window", "64"]
    cmd += ["--no-chat", "--no-self-distill", "--out", str(d / "heads.json"), "--output-dir", str(d / "ckpt")]
    subprocess.run(cmd, check=True)
    print(json.loads((d / "heads.json").read_text())["training"])


if __name__ == "__main__":
    main()

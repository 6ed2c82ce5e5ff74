"""`--kv-budget` on a calibrated SmolLM2 (issue 13): what it picks at several budgets, and from what.

Converts the bundled SmolLM2 with the default heads and `--calibrate TEXT` (KL and top-1 on TEXT for every KV
cache type × sparsity × sink/window of the calibration grid, stored in the GGUF), prints the calibration, then
the configuration `--kv-budget` chooses at --ctx for each budget (the lowest-KL calibrated point that fits),
beside what it would choose without a calibration (the smallest sparsity that fits, f16, the file's S/W).
Finally one `rlkv-edge chat --kv-budget` run shows the choice being loaded. Writes JSON.

    .venv/bin/python bench/kv_budget.py [--text FILE] [--tokens 2048] [--ctx 8192] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlkv_edge.atomic import atomic_write_text
from rlkv_edge.calibration import choose_config
from rlkv_edge.errors import BudgetError
from rlkv_edge.memory import MIB, choose_sparsity
from rlkv_edge.models import bundled_model_path, default_heads_path, read_model

RLKV_EDGE = str(Path(sys.executable).parent / "rlkv-edge")
BUDGETS_MIB = (150, 100, 80, 60, 40, 30, 25, 15)


def main() -> None:
    """Calibrate, choose, print, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses/GPL-3"))
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/kv_budget.json"))
    args = ap.parse_args()
    heads = default_heads_path()
    if heads is None:
        raise SystemExit("no default heads file in this build")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "smollm2.calibrated.rlkv.gguf"
        cmd = [RLKV_EDGE, "convert", str(bundled_model_path()), "--mask", str(heads), "-o", str(model_path)]
        cmd += ["--calibrate", str(args.text), "--calibrate-tokens", str(args.tokens), "-t", str(args.threads)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        model = read_model(model_path)
        cal = model.calibration
        assert cal is not None
        print(f"\ncalibration: {len(cal.points)} points on {cal.n_tokens} tokens of {cal.text}\n")
        print("| K/V | s | S/W | mean KL | top-1 |\n|---|---:|---:|---:|---:|")
        for p in sorted(cal.points, key=lambda p: p.mean_kl):
            print(f"| {p.type_k} | {p.sparsity:g} | {p.sink}/{p.window} | {p.mean_kl:.4f} | {p.top1:.1%} |")

        rows = []
        print(f"\n--kv-budget at --ctx {args.ctx}\n")
        print("| budget MiB | chosen (calibrated) | KV MiB | measured KL | without calibration |")
        print("|---:|---|---:|---:|---|")
        for mib in BUDGETS_MIB:
            budget = int(mib * MIB)
            try:
                c = choose_config(model.info, cal, budget, args.ctx)
                chosen = f"{c.type_k}, s={c.sparsity:g}, S{c.sink}/W{c.window}"
                row = {"budget_mib": mib, "type_k": c.type_k, "type_v": c.type_v, "sparsity": c.sparsity}
                row.update(sink=c.sink, window=c.window, kv_mib=c.kv_bytes / MIB, mean_kl=c.mean_kl)
            except BudgetError:
                chosen, row = "nothing fits", {"budget_mib": mib}
            try:
                plain = choose_sparsity(model.info, budget, args.ctx)
                row["without_calibration"] = {"sparsity": plain.sparsity, "kv_mib": plain.kv_bytes / MIB}
                without = f"f16, s={plain.sparsity:.3g}"
            except BudgetError:
                without = "nothing fits"
            kv = f"{row['kv_mib']:.1f}" if "kv_mib" in row else "–"
            kl = f"{row['mean_kl']:.4f}" if "mean_kl" in row else "–"
            print(f"| {mib} | {chosen} | {kv} | {kl} | {without} |")
            rows.append(row)

        chat = [RLKV_EDGE, "chat", str(model_path), "--ctx", str(args.ctx), "--kv-budget", "40MiB"]
        chat += ["-p", "Say hi.", "-n", "4", "-t", str(args.threads)]
        r = subprocess.run(chat, capture_output=True, text=True, check=True)
        line = next(ln for ln in r.stderr.splitlines() if "--kv-budget" in ln)
        print(f"\n$ rlkv-edge chat MODEL --ctx {args.ctx} --kv-budget 40MiB ...\n{line}")
    record = {
        "text": str(args.text),
        "tokens": cal.n_tokens,
        "ctx": args.ctx,
        "calibration": json.loads(cal.to_json()),
        "choices": rows,
        "chat_line": line,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

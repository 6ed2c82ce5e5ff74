"""The generated parts of docs/RESULTS.md and README.md: at-a-glance tables and verdict, from bench/results/*.json.

Every number on the first screen of docs/RESULTS.md and in README.md's "Results" section sits in a block
between `<!-- table:NAME -->` and `<!-- /table -->`; this script writes those blocks from the JSON they cite, so
a number there cannot drift from its measurement. Text outside the blocks is never touched.

    .venv/bin/python bench/results_page.py            # rewrite the blocks, print which changed
    .venv/bin/python bench/results_page.py --check    # exit 1 (and show a diff) if a block differs from the JSON
    .venv/bin/python bench/results_page.py --print smollm2    # one block to stdout

Blocks: `smollm2` (SmolLM2-135M-Instruct at 8k), `qwen` (Qwen2.5-Coder-0.5B-Instruct at 32k, from
bench/results/qwen_*.json; says "pending" until one exists), `speed32k` (decode at 32k depth, random-weight
shapes), `verdict`, and `readme` (README.md). Each table names the JSON files it read and the commit that last
changed each (`uncommitted` for a file git does not have as it is; commit the JSON, then regenerate), and
whether that commit predates the grouped decode kernel (`GROUPED_KERNEL_COMMIT`): rows measured before it ran
ggml's flash attention even where an rlkv f16 cache would now run the grouped path.

Only the standard library; no model, no native library (tests/bench/test_results_page.py runs it).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = {"docs/RESULTS.md": ROOT / "docs" / "RESULTS.md", "README.md": ROOT / "README.md"}
# Where each block lives, and the link prefix from that file to bench/results/.
BLOCK_FILE = {
    "smollm2": "docs/RESULTS.md",
    "qwen": "docs/RESULTS.md",
    "speed32k": "docs/RESULTS.md",
    "verdict": "docs/RESULTS.md",
    "readme": "README.md",
}
LINK_PREFIX = {"docs/RESULTS.md": "../bench/results/", "README.md": "bench/results/"}
BEGIN = "<!-- table:{name} -->"
END = "<!-- /table -->"
BLOCK_RE = re.compile(r"<!-- table:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /table -->", re.S)

# native/rlkv/rlkv-decode.cpp landed here (2026-11-26 15:42 UTC): from then on an rlkv file with an f16 cache
# decodes on the CPU through the grouped kernel; stock files and quantized caches keep ggml's flash attention.
GROUPED_KERNEL_COMMIT = "54ca793"
HEADS_FILE = "`rlkv_edge/data/default_heads.json`"
# The SmolLM2 heads fingerprint every 8k JSON must carry (distillation on Apache-2.0, the shipped default).
SMOLLM2_HEADS_SHA = "bc48643aac59995a"


# ---------------------------------------------------------------------------------------------- JSON and git


@cache
def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@cache
def commit_of(name: str) -> str:
    """The short hash of the last commit that changed bench/results/NAME.json; `uncommitted` if git lacks it as is."""
    rel = f"bench/results/{name}.json"
    if _git("status", "--porcelain", "--", rel).stdout.strip():
        return "uncommitted"
    out = _git("log", "-1", "--format=%h", "--abbrev=7", "--", rel).stdout.strip()
    return out or "uncommitted"


@cache
def before_grouped_kernel(name: str) -> bool:
    c = commit_of(name)
    if c == "uncommitted":
        return False
    return _git("merge-base", "--is-ancestor", GROUPED_KERNEL_COMMIT, c).returncode != 0


def link(name: str, prefix: str) -> str:
    return f"[{name}]({prefix}{name}.json)"


def sources_line(names: list[str], prefix: str, speed: tuple[str, ...] = ()) -> str:
    """The JSON files a table read, each with its commit; speed runs say whether they predate the grouped kernel."""
    parts = []
    for n in names:
        c = commit_of(n)
        before = n in speed and before_grouped_kernel(n)
        note = f", before the grouped kernel {GROUPED_KERNEL_COMMIT}" if before else ""
        parts.append(f"{link(n, prefix)} ({c}{note})")
    return "JSON (commit that last changed it): " + "; ".join(parts) + "."


# ---------------------------------------------------------------------------------------------- formatting


def f_mib(b: float) -> str:
    return f"{b / 2**20:.1f}"


def f_ratio(x: float) -> str:
    return f"{x:.2f}"


def f_kl(x: float | None) -> str:
    if x is None:
        return "–"
    return "0" if x == 0 else f"{x:.4f}"


def f_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def f_pct1(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# ---------------------------------------------------------------------------------------------- frontier points


def point(name: str, label: str) -> dict[str, Any]:
    for p in load(name)["points"]:
        if p["config"]["label"] == label:
            return p
    raise KeyError(f"bench/results/{name}.json has no point labelled {label!r}")


def config_key(p: dict[str, Any]) -> tuple[Any, ...]:
    c = p["config"]
    return (float(c["sparsity"]), c["sink"], c["window"], c["type_k"], c["type_v"])


def front_8k() -> list[dict[str, Any]]:
    """Every KL point measured at 8k on SmolLM2 with the default heads (random masks left out), one per config."""
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name in ("frontier_8k", "frontier_8k_mixed", "frontier_8k_local_quant"):
        d = load(name)
        if SMOLLM2_HEADS_SHA not in d["heads"] or d["n_tokens"] != 8192:
            raise ValueError(f"{name}.json is not the 8k run with the default heads")
        for p in d["points"]:
            if p["config"]["family"].startswith("random"):
                continue
            seen.setdefault(config_key(p), p)
    return list(seen.values())


def dominators(p: dict[str, Any], pool: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points of pool with no more KV memory and no higher KL than p, better in one of the two."""
    out = []
    for q in pool:
        le = q["kv_bytes"] <= p["kv_bytes"] and q["mean_kl"] <= p["mean_kl"]
        lt = q["kv_bytes"] < p["kv_bytes"] or q["mean_kl"] < p["mean_kl"]
        if le and lt:
            out.append(q)
    return out


def describe(p: dict[str, Any]) -> str:
    c = p["config"]
    types = c["type_k"] if c["type_k"] == c["type_v"] else f"{c['type_k']}/{c['type_v']}"
    s = float(c["sparsity"])
    if s == 0:
        return f"{types} K+V"
    head = "all-local" if s == 1 else f"rlkv s={s:g}"
    return f"{head} S{c['sink']}/W{c['window']}" + ("" if types == "f16" else f" + {types}")


def dominated_note(p: dict[str, Any], pool: list[dict[str, Any]]) -> str:
    dom = dominators(p, pool)
    if not dom:
        return "no"
    # Name a plain llama.cpp cache type first (what a user could run instead: the lowest KL), else the smallest.
    plain = [q for q in dom if float(q["config"]["sparsity"]) == 0]
    best = min(plain, key=lambda q: q["mean_kl"]) if plain else min(dom, key=lambda q: q["kv_bytes"])
    return f"yes, by {describe(best)}" + (f" (+{len(dom) - 1} more)" if len(dom) > 1 else "")


# ---------------------------------------------------------------------------------------------- SmolLM2 at 8k


@dataclass(frozen=True)
class Row:
    name: str  # what a user runs
    kl: tuple[str, str] | None  # (json, point label) of the 8k KL run
    recall: tuple[str, list[str]] | None = None  # (json, labels): key recall past the window
    tg: tuple[str, str] | None = None  # (json, result label): tg128 at depth 8192


SMOLLM2_ROWS = [
    Row(
        "f16, every head full (stock)",
        ("frontier_8k", "f16 full"),
        ("recall_long", ["f16 full"]),
        ("bench_8k_f16", "none"),
    ),
    Row("`-ctk q8_0 -ctv q8_0`", ("frontier_8k", "q8_0 full"), None, ("bench_8k_q8_0", "none")),
    Row("`-ctk q8_0 -ctv q4_0`", ("frontier_8k_mixed", "q8_0/q4_0 full"), ("recall_long", ["q8_0/q4_0 full"])),
    Row("`-ctk q4_0 -ctv q4_0`", ("frontier_8k", "q4_0 full"), None, ("bench_8k_q4_0", "none")),
    Row(
        "`convert`'s default: rlkv s=0.5 S64/W256, f16",
        ("frontier_8k", "rlkv s=0.5 S64/W256"),
        None,
        ("bench_8k_f16", "s=0.5"),
    ),
    Row("rlkv s=0.75 S64/W1024, f16", ("frontier_8k", "rlkv s=0.75 S64/W1024")),
    Row(
        "rlkv s=0.75 S64/W1024 + q8_0",
        ("frontier_8k", "rlkv s=0.75 S64/W1024 + q8_0"),
        None,
        ("bench_8k_w1024_q8_0", "s=0.75"),
    ),
    Row(
        "rlkv s=0.75 S64/W1024 + q8_0/q4_0",
        ("frontier_8k_mixed", "rlkv s=0.75 S64/W1024 + q8_0/q4_0"),
        ("recall_long", ["rlkv s=0.75 S64/W1024 + q8_0/q4_0"]),
    ),
    Row(
        "random heads (3 seeds), s=0.75 S64/W1024 + q8_0/q4_0",
        None,
        ("recall_long_random", [f"random-{i} s=0.75 S64/W1024 + q8_0/q4_0" for i in range(3)]),
    ),
    Row(
        "all-local S64/W2048 + q8_0/q4_0",
        ("frontier_8k_local_quant", "rlkv s=1 S64/W2048 + q8_0/q4_0"),
        ("recall_long", ["all-local S64/W2048 + q8_0/q4_0"]),
    ),
    Row("all-local S64/W1024, f16", ("frontier_8k", "all-local S64/W1024")),
]
# The JSON files of the bench rows record neither S/W nor cache types; these are from the commands in RESULTS.md.
BENCH_8K_RUNS = {
    "bench_8k_f16": "f16, S64/W256",
    "bench_8k_q8_0": "q8_0, S64/W256",
    "bench_8k_w1024_q8_0": "q8_0, S64/W1024",
    "bench_8k_q4_0": "q4_0, S64/W256",
}


def bench_result(name: str, label: str) -> dict[str, Any]:
    for r in load(name)["results"]:
        if r["label"] == label:
            return r
    raise KeyError(f"bench/results/{name}.json has no result labelled {label!r}")


def recall_cell(spec: tuple[str, list[str]] | None) -> tuple[str, int | None]:
    if spec is None:
        return "–", None
    name, labels = spec
    pts = [point(name, lab) for lab in labels]
    return " / ".join(f_pct(p["accuracy"]) for p in pts), pts[0]["kv_bytes"]


def smollm2_rows(prefix: str) -> list[list[str]]:
    pool = front_8k()
    f16 = point("frontier_8k", "f16 full")["kv_bytes"]
    tg_f16 = bench_result("bench_8k_f16", "none")["tg"]["8192"]
    reasoning = next(r for r in load("reasoning_task")["results"] if r["label"] == "full")["accuracy"]
    rows = []
    for row in SMOLLM2_ROWS:
        names: list[str] = []
        recall, recall_bytes = recall_cell(row.recall)
        if row.recall:
            names.append(row.recall[0])
        if row.kl:
            p = point(*row.kl)
            kv_bytes, kl, dom = p["kv_bytes"], p["mean_kl"], dominated_note(p, pool)
            names.insert(0, row.kl[0])
            if recall_bytes is not None and recall_bytes != kv_bytes:
                raise ValueError(f"{row.name}: the recall and KL runs disagree on KV bytes")
        else:
            assert recall_bytes is not None
            kv_bytes, kl, dom = recall_bytes, None, "–"
        tg = "–"
        if row.tg:
            t = bench_result(*row.tg)["tg"]["8192"]
            tg = f"{t:.1f} ({t / tg_f16:.2f}×)"
            names.append(row.tg[0])
        reason = f"{f_pct1(reasoning)} (chance)" if row.kl == ("frontier_8k", "f16 full") else "–"
        rows.append(
            [
                row.name,
                f_mib(kv_bytes),
                f_ratio(kv_bytes / f16),
                f_kl(kl),
                dom,
                recall,
                reason,
                tg,
                ", ".join(link(n, prefix) for n in dict.fromkeys(names)),
            ]
        )
    return rows


def block_smollm2(prefix: str) -> list[str]:
    d = load("frontier_8k")
    rl = load("recall_long")
    tg_files = list(BENCH_8K_RUNS)
    before = [n for n in tg_files if before_grouped_kernel(n)]
    kernel = (
        "ggml's flash attention on every row: these runs predate the grouped kernel "
        f"({GROUPED_KERNEL_COMMIT}); today an rlkv f16 cache decodes on it, stock f16 and quantized caches do not"
        if len(before) == len(tg_files)
        else "per run, see the commits below"
    )
    out = table(
        [
            "config",
            "KV MiB",
            "× f16",
            "KL @ 8k",
            "dominated (KV, KL)?",
            "key recall",
            "reasoning acc.",
            "tg128 @ 8192 t/s",
            "JSON",
        ],
        ["---", "---:", "---:", "---:", "---", "---:", "---:", "---:", "---"],
        smollm2_rows(prefix),
    )
    tasks = rl["tasks"].removeprefix("key recall, ")
    out += [
        "",
        f"- Heads: {HEADS_FILE} (distillation on Apache-2.0, scores {SMOLLM2_HEADS_SHA}); S/W and cache types as "
        "in each row; CPU, 2 threads.",
        f"- KL: mean over {d['n_tokens']} tokens of GPL-3 + GFDL-1.3 against the f16 cache, n_ctx {d['n_ctx']}. "
        "Dominated: another measured 8k point needs no more KV memory for no more KL (random masks left out).",
        f"- Key recall: {tasks}, the fact stated before S64 + W2048, n_ctx {rl['n_ctx']}. "
        "Reasoning: no task family tried reaches 50% on this model with a full cache (linked codes, 40 problems, "
        "S16/W64 prompts), so it is not measured per config.",
        "- tg128 at depth 8192, n_ctx 8704, with its ratio to stock f16 (another process for the q8_0/q4_0 runs): "
        + "; ".join(f"{link(n, prefix)} {v}" for n, v in BENCH_8K_RUNS.items())
        + f". Decode kernel: {kernel}.",
        "- "
        + sources_line(
            [
                "frontier_8k",
                "frontier_8k_mixed",
                "frontier_8k_local_quant",
                "recall_long",
                "recall_long_random",
                *tg_files,
                "reasoning_task",
            ],
            prefix,
            speed=tuple(tg_files),
        ),
    ]
    return out


# ---------------------------------------------------------------------------------------------- Qwen at 32k


QWEN_PENDING = (
    "**Pending.** Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, 14 query / 2 KV heads, 32k context, real "
    "weights) is being measured (issue 27, item 1). This block is generated from `bench/results/qwen_*.json` "
    "once such a file exists; until then nothing here is a result."
)


# JSON whose table a later run replaced: left off the first screen once the replacement exists (kept in the note).
SUPERSEDED = {
    "qwen_cross_s05": ("qwen_cross_s05_w128", "notes/qwen-program-trace-w64.md"),
    "qwen_reasoning_full": ("qwen_cross_s05_w128_n100", "notes/qwen-program-trace-w64.md"),
}


def qwen_files() -> list[str]:
    """The Qwen JSON shown on the first screen: every bench/results/qwen_*.json but the superseded."""
    names = sorted(p.stem for p in RESULTS.glob("qwen_*.json"))
    return [n for n in names if not (n in SUPERSEDED and SUPERSEDED[n][0] in names)]


def superseded_line(names: list[str], prefix: str) -> str:
    """Which superseded JSON the first screen leaves off, and where they are discussed."""
    gone = [(n, *SUPERSEDED[n]) for n in sorted(SUPERSEDED) if n not in names and SUPERSEDED[n][0] in names]
    if not gone:
        return ""
    docs = "" if prefix.startswith("../") else "docs/"
    return "Superseded, not shown: " + "; ".join(
        f"{link(n, prefix)} by {link(by, prefix)} ([{Path(note).name}]({docs}{note}))" for n, by, note in gone
    )


def frontier_block(name: str, prefix: str) -> list[str]:
    d = load(name)
    pts = d["points"]
    f16 = next((p["kv_bytes"] for p in pts if p["config"]["family"] == "full"), None)
    has_acc = any(p.get("accuracy") is not None for p in pts)
    out = [
        f"{link(name, prefix)}: {d.get('model', '?')}, {d.get('n_tokens', '?')} tokens of {d.get('text', '?')}, "
        f"n_ctx {d.get('n_ctx', '?')}, heads {d.get('heads', '?')}. `*` = on the front (KV bytes, KL).",
        "",
    ]
    rows = []
    for p in sorted(pts, key=lambda q: q["kv_bytes"]):
        c = p["config"]
        r = [
            "*" if p.get("on_front") else "",
            c["label"],
            f"{c['type_k']}/{c['type_v']}",
            f_mib(p["kv_bytes"]),
            f_ratio(p["kv_bytes"] / f16) if f16 else "–",
            f_kl(p.get("mean_kl")),
        ]
        if has_acc:
            r.append(f_pct(p.get("accuracy")))
        rows.append(r)
    header = ["front", "config", "K/V", "KV MiB", "× f16", "KL"] + (["key recall"] if has_acc else [])
    align = [":---:", "---", "---", "---:", "---:", "---:"] + (["---:"] if has_acc else [])
    return out + table(header, align, rows)


def bench_block(name: str, prefix: str) -> list[str]:
    d = load(name)
    depths = [str(x) for x in d.get("depths", [])]
    rows = []
    for r in d["results"]:
        cells = [r["label"], f"{r['kv_mib']:.1f}"]
        for dep in depths:
            t = r["tg"].get(dep)
            ratio = r.get("tg_ratio", {}).get(dep)
            cells.append("–" if t is None else f"{t:.1f}" + ("" if ratio is None else f" ({ratio:.2f}×)"))
        rows.append(cells)
    out = [f"{link(name, prefix)}: tg{d.get('n_gen', '?')} t/s (× its baseline), n_ctx {d.get('n_ctx', '?')}.", ""]
    return out + table(
        ["config", "KV MiB", *[f"tg @ {x}" for x in depths]], ["---", "---:", *["---:"] * len(depths)], rows
    )


def cross_block(name: str, prefix: str) -> list[str]:
    """bench/cross_table.py's layout: head sets x sparsity on the reasoning family (accuracy, answer length,
    cut-off, share of answers longer than S + W)."""
    d = load(name)
    fam = d.get("family", "?")
    out = [
        f"{link(name, prefix)}: {d.get('model', '?')}, reasoning family `{fam}` ({d.get('n_reasoning', '?')} held-out "
        f"problems, greedy), S{d['sink']}/W{d['window']}, {d.get('threads', '?')} threads.",
        "",
    ]
    rows = []
    for r in d["rows"]:
        det = (r.get("detail") or {}).get("reasoning") or {}
        rows.append(
            [
                r["heads"],
                f"{r['sparsity']:g}",
                f_pct(r.get("reasoning")),
                "–" if "tokens" not in det else f"{det['tokens']:.0f}",
                f_pct(det.get("cut_off")),
                f_pct(det.get("longer")),
            ]
        )
    header = ["heads", "s", "accuracy", "mean answer tokens", "cut off", f"answer > S + W = {d['sink'] + d['window']}"]
    return out + table(header, ["---", "---:", "---:", "---:", "---:", "---:"], rows)


def depth_block(name: str, prefix: str) -> list[str]:
    """bench/depth_speed.py's layout: tg128 at each depth, every row on one kernel, the head split's factor
    beside the traffic model's prediction and the kernel's factor."""
    d = load(name)
    out = [
        f"{link(name, prefix)}: {d.get('model', '?')}, heads {d.get('heads', '?')} (S{d['sink']}/W{d['window']}), "
        f"f16 caches, {d.get('threads', '?')} threads, depth by marking cells. Split = rlkv ÷ stock on the same "
        "kernel (traffic model's prediction in brackets); kernel = grouped ÷ ggml for the same row.",
        "",
    ]
    rows = [
        [
            str(r["depth"]),
            r["row"],
            f"{r['kv_mib']:.1f}",
            f"{r['tg']:.1f}",
            f"{r['split_tg']:.2f}× ({r['split_predicted']:.2f}×)" if r.get("split_predicted") else "–",
            f"{r['kernel_tg']:.2f}×",
        ]
        for r in d["rows"]
    ]
    header = ["depth", "row [kernel]", "KV MiB", "tg128 t/s", "split (predicted)", "kernel"]
    return out + table(header, ["---:", "---", "---:", "---:", "---:", "---:"], rows)


def recall_block(name: str, prefix: str) -> list[str]:
    """bench/recall_depth.py's layout: key recall at depth per configuration, with its KV memory."""
    d = load(name)
    f16 = d.get("kv_bytes_f16")
    out = [
        f"{link(name, prefix)}: {d.get('model', '?')}, key recall at {d['n_tokens']} tokens of {d.get('text', '?')}: "
        f"{d['n_facts']} facts, each at least {d['min_distance']} tokens before its question, greedy; heads "
        f"{d.get('heads', '?')}, {d.get('threads', '?')} threads.",
        "",
    ]
    rows = [
        [
            r["label"],
            f_mib(r["kv_bytes"]),
            f_ratio(r["kv_bytes"] / f16) if f16 else "–",
            f"{sum(a['correct'] for a in r['answers'])}/{len(r['answers'])} ({f_pct(r['accuracy'])})",
        ]
        for r in d["rows"]
    ]
    return out + table(["config", "KV MiB", "× f16", "key recall"], ["---", "---:", "---:", "---:"], rows)


def block_qwen(prefix: str) -> list[str]:
    names = qwen_files()
    if not names:
        return [QWEN_PENDING]
    out: list[str] = []
    for n in names:
        d = load(n)
        if "points" in d:
            out += frontier_block(n, prefix)
        elif "n_facts" in d:
            out += recall_block(n, prefix)
        elif "rows" in d and "depths" in d:
            out += depth_block(n, prefix)
        elif "rows" in d and "sink" in d:
            out += cross_block(n, prefix)
        elif "results" in d:
            out += bench_block(n, prefix)
        else:
            out.append(f"{link(n, prefix)}: no renderer for this JSON's layout yet (bench/results_page.py).")
        out.append("")
    out.append(sources_line(names, prefix))
    gone = superseded_line(names, prefix)
    return out + (["", gone] if gone else [])


# ---------------------------------------------------------------------------------------------- speed at 32k


def scale_result(name: str, shape: str, label: str) -> dict[str, Any]:
    for r in load(name)["shapes"][shape]["results"]:
        if r["label"] == label:
            return r
    raise KeyError(f"bench/results/{name}.json has no {shape} result {label!r}")


def block_speed32k(prefix: str) -> list[str]:
    dep = "32768"
    gq = load("gqa_decode")["runs"]["alone"]["rows"][-1]
    rows = []
    for shape in ("smollm2", "r1-8b"):
        for label, name, kernel in (
            ("f16 (stock)", "scale_grouped", "ggml FA"),
            ("q8_0", "scale_grouped", "ggml FA"),
            ("rlkv s=0.5 S64/W256, f16", "scale_grouped", "**grouped** (stock row: ggml FA) ⚠"),
            ("rlkv s=0.5 S64/W256, f16", "scale", "ggml FA, same as stock"),
            ("rlkv s=0.5 S64/W256 + q8_0", "scale_grouped", "ggml FA"),
        ):
            key = {"f16 (stock)": "f16", "q8_0": "q8_0"}.get(label) or (
                "rlkv s=0.5 + q8_0" if "q8_0" in label else "rlkv s=0.5"
            )
            r = scale_result(name, shape, key)
            meas, pred = r["tg_ratio"][dep], r["tg_ratio_predicted"][dep]
            rows.append(
                [
                    shape,
                    label,
                    f_ratio(r["kv_ratio"]),
                    kernel,
                    f"{r['tg'][dep]:.1f}",
                    "–" if key == "f16" else f"{meas:.2f}× / {pred:.2f}×",
                    link(name, prefix),
                ]
            )
        if shape == "r1-8b":
            rows.append(
                [
                    shape,
                    "rlkv s=0.5 ÷ s=1/32 (head split alone)",
                    "–",
                    "grouped on both",
                    f"{1000 / gq['ms_per_token']['s=0.5 grouped']:.1f}",
                    f"{gq['grouped_over_near_f16']:.2f}× / {gq['predicted_over_near_f16']:.2f}×",
                    link("gqa_decode", prefix),
                ]
            )
    out = [
        "Random-weight Q4_0 GGUFs of two attention shapes (smollm2: 30 layers, 9 query / 3 KV heads, D 64; r1-8b: "
        "DeepSeek-R1-Distill-Llama-8B's 32 query / 8 KV heads, D 128, but 4 layers), placeholder head scores "
        "(speed and memory do not depend on them), depth 32768 reached with `--fill mark`, tg128 (gqa_decode: "
        f"tg32 at depth {gq['depth']}), 2 threads, 1 repetition (gqa_decode: 2). Ratios are against stock f16 in "
        "the same JSON, measured / predicted by the decode-traffic model. ⚠ = the rlkv row runs a kernel the "
        "stock row does not get: that factor mixes the kernel with the head split and favours rlkv.",
        "",
    ]
    out += table(
        ["shape", "config", "KV × f16", "decode kernel", "tg t/s", "× stock f16 (meas. / pred.)", "JSON"],
        ["---", "---", "---:", "---", "---:", "---:", "---"],
        rows,
    )
    names = ["scale_grouped", "scale", "gqa_decode"]
    out += ["", sources_line(names, prefix, speed=tuple(names))]
    return out


# ---------------------------------------------------------------------------------------------- verdict


def block_verdict(prefix: str) -> list[str]:
    f16 = point("frontier_8k", "f16 full")
    q8 = point("frontier_8k", "q8_0 full")
    q4 = point("frontier_8k", "q4_0 full")
    default = point("frontier_8k", "rlkv s=0.5 S64/W256")
    r_q8 = point("frontier_8k", "rlkv s=0.75 S64/W1024 + q8_0")
    r_mix = point("frontier_8k_mixed", "rlkv s=0.75 S64/W1024 + q8_0/q4_0")
    loc = point("frontier_8k_local_quant", "rlkv s=1 S64/W2048 + q8_0/q4_0")
    rec = {p["config"]["label"]: p["accuracy"] for p in load("recall_long")["points"]}
    rnd = [p["accuracy"] for p in load("recall_long_random")["points"] if p["config"]["family"].startswith("random")]
    gq = load("gqa_decode")["runs"]["alone"]["rows"][-1]
    r18 = scale_result("scale_grouped", "r1-8b", "rlkv s=0.5")
    r18_ggml = scale_result("scale", "r1-8b", "rlkv s=0.5")
    tg_f16 = bench_result("bench_8k_f16", "none")["tg"]["8192"]
    tg_q8 = bench_result("bench_8k_q8_0", "none")["tg"]["8192"]
    tg_rq8 = bench_result("bench_8k_w1024_q8_0", "s=0.75")["tg"]["8192"]
    x = f16["kv_bytes"]

    def m(p: dict[str, Any]) -> str:
        return f"{f_mib(p['kv_bytes'])} MiB ({f_ratio(p['kv_bytes'] / x)}× f16)"

    fr, sg = link("frontier_8k", prefix), link("scale_grouped", prefix)
    mx, lq = link("frontier_8k_mixed", prefix), link("frontier_8k_local_quant", prefix)
    benches = ", ".join(link(n, prefix) for n in ("bench_8k_w1024_q8_0", "bench_8k_q8_0", "bench_8k_f16"))
    return [
        f"- **If `-ctk q8_0 -ctv q8_0` fits, use it, not `convert`'s default.** At 8k on SmolLM2 it needs {m(q8)} "
        f"for KL {f_kl(q8['mean_kl'])}; a file converted with the defaults (rlkv s=0.5 S64/W256, f16) needs "
        f"{m(default)} for KL "
        f"{f_kl(default['mean_kl'])}: more memory, {default['mean_kl'] / q8['mean_kl']:.0f}× the KL ({fr}). "
        "The README's examples therefore run q8_0 or the points below, and the bundled model by name runs "
        "s=0.75 S64/W1024 + q8_0/q4_0 (`rlkv_edge/catalog.py`).",
        f"- **Below q8_0's memory, compose rlkv with quantization.** s=0.75 S64/W1024 + q8_0 needs "
        f"{m(r_q8)} for KL {f_kl(r_q8['mean_kl'])}, against q4_0's {m(q4)} and KL {f_kl(q4['mean_kl'])}; with q8_0 "
        f"keys / q4_0 values {m(r_mix)}, KL {f_kl(r_mix['mean_kl'])}. It decodes at {tg_rq8:.1f} t/s at depth "
        f"8192 where q8_0 K+V runs {tg_q8:.1f} and stock f16 {tg_f16:.1f} (separate processes, ggml's kernel; "
        f"{fr}, {mx}, {benches}).",
        f"- **On running text, all-local with the same quantization ties it**: S64/W2048 + q8_0/q4_0 needs "
        f"{m(loc)} for KL {f_kl(loc['mean_kl'])} ({lq}). A wide window buys what the full heads add to KL at 8k "
        "on this model.",
        "- **What the head split buys is recall past the window.** A fact stated before S64 + W2048: "
        f"rlkv s=0.75 + q8_0/q4_0 recalls {f_pct(rec['rlkv s=0.75 S64/W1024 + q8_0/q4_0'])}, all-local W2048 with "
        f"the same types {f_pct(rec['all-local S64/W2048 + q8_0/q4_0'])}, random heads "
        f"{' / '.join(f_pct(a) for a in rnd)}, the full f16 cache {f_pct(rec['f16 full'])} (10 problems: one "
        f"problem is 10 points; {link('recall_long', prefix)}).",
        f'- **The "7×" of the random-weight r1-8b shape at 32k is mostly the kernel.** There '
        f"rlkv s=0.5 decodes {r18['tg_ratio']['32768']:.2f}× stock f16 ({sg}), but that compares the grouped "
        f"kernel, which only rlkv files get, with ggml's: on the same kernel the head split gives "
        f"{gq['grouped_over_near_f16']:.2f}× (predicted {gq['predicted_over_near_f16']:.2f}×; "
        f"{link('gqa_decode', prefix)}), on ggml's {r18_ggml['tg_ratio']['32768']:.2f}× ({link('scale', prefix)}).",
        *qwen_verdict(prefix),
    ]


def kv_types(p: dict[str, Any]) -> tuple[str, str]:
    """A front point's K and V cache types."""
    return p["config"]["type_k"], p["config"]["type_v"]


def qwen_front_bullet(prefix: str) -> str:
    """The 32k front in one sentence: q8_0 against the rlkv points and all-local at their memory."""
    d = load("qwen_front_32k")
    pts = {p["config"]["label"]: p for p in d["points"]}
    f16 = pts["f16/f16 full"]["kv_bytes"]

    def m(p: dict[str, Any]) -> str:
        return f"{f_mib(p['kv_bytes'])} MiB ({f_ratio(p['kv_bytes'] / f16)}× f16), KL {f_kl(p['mean_kl'])}"

    parts = []
    for label, p in pts.items():
        if p["config"]["family"] != "rlkv+quant":
            continue
        s, w = p["config"]["sparsity"], p["config"]["window"]
        loc = next(
            (q for k, q in pts.items() if k.endswith(f"(= memory of s={s:g} W{w})") and kv_types(q) == kv_types(p)),
            None,
        )
        vs = (
            f"; all-local at that memory with the same types {m(loc)} ({loc['mean_kl'] / p['mean_kl']:.1f}× the KL)"
            if loc
            else "; all-local at that memory with these types not measured"
        )
        rnd = [
            q
            for q in pts.values()
            if q["config"]["family"] == "random" and q["config"]["sparsity"] == s and kv_types(q) == kv_types(p)
        ]
        rn = (
            f"; {len(rnd)} random head set(s) at s={s:g}: KL {' / '.join(f_kl(q['mean_kl']) for q in rnd)}"
            if rnd
            else ""
        )
        parts.append(f"{label} {m(p)}{vs}{rn}")
    q8 = pts.get("q8_0/q8_0 full")
    q8_text = f"`-ctk q8_0 -ctv q8_0` {m(q8)}" if q8 else "q8_0 K/V not measured at this context"
    return (
        f"- **Qwen2.5-Coder-0.5B at {d['n_tokens']} tokens of held-out text** (KL over the last {d['score_last']} "
        f"positions against the f16 cache): {q8_text}; " + "; ".join(parts) + f"{_below_q8(pts)} "
        f"({link('qwen_front_32k', prefix)})."
    )


def _below_q8(pts: dict[str, dict[str, Any]]) -> str:
    """What the rlkv points under q8_0's memory cost in KL against q8_0 (empty without both)."""
    q8 = pts.get("q8_0/q8_0 full")
    below = [p for p in pts.values() if p["config"]["family"] == "rlkv+quant" and q8 and p["kv_bytes"] < q8["kv_bytes"]]
    if not q8 or not below:
        return ""
    best = min(below, key=lambda p: p["mean_kl"])
    return (
        f". rlkv saves {f_ratio(q8['kv_bytes'] / best['kv_bytes'])}× q8_0's memory "
        f"at {best['mean_kl'] / q8['mean_kl']:.1f}× "
        "its KL: where the output must stay as close to f16 as q8_0 keeps it, plain q8_0 is the choice at this context"
        + _pairs_below_q8(pts, q8)
    )


def _pairs_below_q8(pts: dict[str, dict[str, Any]], q8: dict[str, Any]) -> str:
    """Which llama.cpp cache-type pairs under q8_0's memory an rlkv point dominates (≤ memory and ≤ KL)."""
    rlkv = [p for p in pts.values() if p["config"]["family"] == "rlkv+quant"]
    pairs = [p for p in pts.values() if p["config"]["family"] == "kv-quant" and p["kv_bytes"] < q8["kv_bytes"]]
    if not pairs:
        return ""
    said = []
    for p in sorted(pairs, key=lambda q: q["kv_bytes"]):
        c = p["config"]
        dom = dominators(p, rlkv)
        by = "not dominated by an rlkv point"
        if dom:
            by = f"dominated by {describe(min(dom, key=lambda q: q['mean_kl']))}"
        said.append(f"{c['type_k']}/{c['type_v']} ({m_short(p, pts)}) {by}")
    return ". Cache-type pairs under q8_0's memory: " + "; ".join(said)


def m_short(p: dict[str, Any], pts: dict[str, dict[str, Any]]) -> str:
    """'0.28× f16, KL 0.047' for a front point."""
    return f"{f_ratio(p['kv_bytes'] / pts['f16/f16 full']['kv_bytes'])}× f16, KL {f_kl(p['mean_kl'])}"


# The program-trace cross tables, the one the verdict quotes first (most problems, then the widest window).
QWEN_REASONING = ("qwen_cross_s05_w128_n100", "qwen_cross_s05_w128", "qwen_cross_s05")


def cross_accuracy(d: dict[str, Any]) -> dict[tuple[str, float], float]:
    """A cross table's reasoning accuracy by (head set, sparsity)."""
    return {(r["heads"], r["sparsity"]): r["reasoning"] for r in d["rows"]}


def qwen_reasoning_bullet(name: str, prefix: str) -> str:
    """Program tracing at s=0.5: each head set's accuracy against the full cache and the random masks' mean; rows
    the file lacks (uniform, all-local) from a smaller run at the same S/W, with its problem count."""
    d = load(name)
    acc = cross_accuracy(d)
    full = acc[("full cache", 0.0)]
    rnd = [a for (h, s), a in acc.items() if h.startswith("random-") and s == 0.5]

    def vs(h: str) -> str:
        a = acc.get((h, 0.5))
        return "–" if a is None else f"{f_pct(a)} ({100 * (a - full):+.0f} points)"

    def other(key: tuple[str, float]) -> str:
        if key in acc:
            return f_pct(acc[key])
        for n in QWEN_REASONING:
            o = load(n) if n != name and (RESULTS / f"{n}.json").is_file() else None
            if o and (o["sink"], o["window"]) == (d["sink"], d["window"]):
                got = cross_accuracy(o)
                if key in got:
                    return f"{f_pct(got[key])} (first {o['n_reasoning']} problems, {link(n, prefix)})"
        return "–"

    sim = d["similarity"][0] if d.get("similarity") else None
    same = (
        f" The two ablation head sets' full heads at s=0.5 overlap with Jaccard {sim['jaccard']:.2f}, their scores "
        f"rank-correlate at Spearman ρ {sim['spearman']:+.2f}; no GRPO or distillation heads exist for this model "
        "yet, so the paper's question (do RL heads differ?) is open here."
        if sim
        else ""
    )
    mean = f" (mean {f_pct(sum(rnd) / len(rnd))})" if rnd else ""
    masks = f"{len(rnd)} random mask" + ("s" if len(rnd) != 1 else "")
    return (
        f"- **Qwen2.5-Coder-0.5B, program tracing with half its heads local (s=0.5, S{d['sink']}/W{d['window']}):** "
        f"full cache {f_pct(full)}; the shipped ablation heads {vs('ablation')}, heads ablated on the model's own "
        f"chains of thought {vs('trace-ablation')}, {masks} {' / '.join(f_pct(a) for a in rnd)}{mean} "
        f"({d['n_reasoning']} held-out problems, greedy; {link(name, prefix)}); the per-layer-uniform mask "
        f"{other(('uniform', 0.5))}, all-local {other(('all local', 1.0))}.{same}"
    )


def qwen_recall_bullet(name: str, prefix: str) -> str:
    """Key recall at depth: the full cache, the shipped heads, all-local at their memory and the random masks."""
    d = load(name)
    f16 = d["kv_bytes_f16"]

    def cell(r: dict[str, Any]) -> str:
        got = f"{sum(a['correct'] for a in r['answers'])}/{len(r['answers'])}"
        return f"{f_pct(r['accuracy'])} ({got}) at {f_ratio(r['kv_bytes'] / f16)}× f16"

    rows = {r["label"]: r for r in d["rows"]}
    full = next(r for k, r in rows.items() if k.endswith(" full"))
    rlkv = [r for k, r in rows.items() if k.startswith("rlkv ") and "[" not in k]
    loc = [r for k, r in rows.items() if k.startswith("all-local ")]
    rnd = [r for k, r in rows.items() if k.startswith("random-")]
    said = [f"every head full {cell(full)}"]
    said += [f"the shipped heads ({r['label']}) {cell(r)}" for r in rlkv]
    said += [f"all-local at that memory with the same types ({r['label'].split(' (')[0]}) {cell(r)}" for r in loc]
    if rnd:
        said.append(f"{len(rnd)} random head set(s) {' / '.join(f_pct(r['accuracy']) for r in rnd)}")
    return (
        f"- **Qwen2.5-Coder-0.5B, key recall at {d['n_tokens']} tokens** (a fact at least {d['min_distance']} tokens "
        f"before its question, {d['n_facts']} facts, greedy): " + "; ".join(said) + f" ({link(name, prefix)})."
    )


def qwen_verdict(prefix: str) -> list[str]:
    """The Qwen2.5-Coder-0.5B bullets, each from its JSON when it exists: decode at 32k depth on one kernel, the
    32k front, the reasoning family at s=0.5."""
    out: list[str] = []
    if (RESULTS / "qwen_depth_speed.json").is_file():
        d = load("qwen_depth_speed")
        dep = max(d["depths"])
        at = {r["row"]: r for r in d["rows"] if r["depth"] == dep}
        st, st_ggml = at["stock f16 [grouped]"], at["stock f16 [ggml]"]
        r75, r50 = at["rlkv s=0.75 f16 [grouped]"], at["rlkv s=0.5 f16 [grouped]"]
        out.append(
            f"- **Qwen2.5-Coder-0.5B, decode at depth {dep}: the head split alone gives {f_ratio(r75['split_tg'])}× "
            f"at s=0.75 and {f_ratio(r50['split_tg'])}× at s=0.5** (traffic model: {f_ratio(r75['split_predicted'])}× "
            f"and {f_ratio(r50['split_predicted'])}×), both rows on the grouped kernel: stock f16 {st['tg']:.1f} t/s, "
            f"rlkv s=0.75 {r75['tg']:.1f} t/s. The kernel is the larger factor: on the unconverted file it decodes "
            f"{f_ratio(st['kernel_tg'])}× ggml's flash attention ({st_ggml['tg']:.1f} t/s), but only f16 caches take "
            f"it (`RLKV_DECODE_ATTN=force` for an unconverted file); q8_0 caches decode on ggml's "
            f"({link('qwen_depth_speed', prefix)})."
        )
    if (RESULTS / "qwen_front_32k.json").is_file():
        out.append(qwen_front_bullet(prefix))
    for path in sorted(RESULTS.glob("qwen_recall_*.json")):
        out.append(qwen_recall_bullet(path.stem, prefix))
    cross = next((n for n in QWEN_REASONING if (RESULTS / f"{n}.json").is_file()), None)
    if cross:
        out.append(qwen_reasoning_bullet(cross, prefix))
    return out


# ---------------------------------------------------------------------------------------------- README


README_ROWS = [
    ("f16, every head full", ("frontier_8k", "f16 full"), "f16 full"),
    ("`-ctk q8_0 -ctv q8_0`", ("frontier_8k", "q8_0 full"), None),
    ("`convert`'s default (s=0.5 S64/W256, f16)", ("frontier_8k", "rlkv s=0.5 S64/W256"), None),
    (
        "rlkv s=0.75 S64/W1024, `-ctk q8_0 -ctv q4_0`",
        ("frontier_8k_mixed", "rlkv s=0.75 S64/W1024 + q8_0/q4_0"),
        "rlkv s=0.75 S64/W1024 + q8_0/q4_0",
    ),
    (
        "all-local S64/W2048, `-ctk q8_0 -ctv q4_0`",
        ("frontier_8k_local_quant", "rlkv s=1 S64/W2048 + q8_0/q4_0"),
        "all-local S64/W2048 + q8_0/q4_0",
    ),
]


def block_readme(prefix: str) -> list[str]:
    pool = front_8k()
    x = point("frontier_8k", "f16 full")["kv_bytes"]
    rec = {p["config"]["label"]: p["accuracy"] for p in load("recall_long")["points"]}
    rows = []
    for name, kl, r in README_ROWS:
        p = point(*kl)
        rows.append(
            [
                name,
                f_mib(p["kv_bytes"]),
                f_ratio(p["kv_bytes"] / x),
                f_kl(p["mean_kl"]),
                dominated_note(p, pool),
                f_pct(rec[r]) if r else "–",
            ]
        )
    names = ["frontier_8k", "frontier_8k_mixed", "frontier_8k_local_quant", "recall_long"]
    out = [
        f"SmolLM2-135M-Instruct at 8k context on a 2-core CPU, heads {HEADS_FILE}: KV memory, mean KL against "
        "the f16 cache over 8192 tokens of GPL-3 + GFDL-1.3, and key recall of a fact stated past S64 + W2048 "
        "(10 problems). Speed, the 32k shapes, the second model and the limits: `docs/RESULTS.md`.",
        "",
    ]
    out += table(
        ["config", "KV MiB", "× f16", "KL @ 8k", "dominated (KV, KL)?", "key recall"],
        ["---", "---:", "---:", "---:", "---", "---:"],
        rows,
    )
    out += ["", sources_line(names, prefix)]
    return out


BLOCKS: dict[str, Callable[[str], list[str]]] = {
    "smollm2": block_smollm2,
    "qwen": block_qwen,
    "speed32k": block_speed32k,
    "verdict": block_verdict,
    "readme": block_readme,
}


def render(name: str) -> str:
    return "\n".join(BLOCKS[name](LINK_PREFIX[BLOCK_FILE[name]])) + "\n"


# ---------------------------------------------------------------------------------------------- rewriting


def blocks_in(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK_RE.finditer(text)}


def rewrite(text: str, names: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m["name"]
        if name not in names:
            return m.group(0)
        return BEGIN.format(name=name) + "\n" + render(name) + END

    return BLOCK_RE.sub(sub, text)


def expected_docs() -> dict[str, tuple[str, str]]:
    """{doc: (current text, text with every block regenerated)}; a block missing from its file is an error."""
    out = {}
    for doc, path in DOCS.items():
        text = path.read_text()
        names = [n for n, f in BLOCK_FILE.items() if f == doc]
        missing = [n for n in names if n not in blocks_in(text)]
        if missing:
            raise SystemExit(f"{doc} lacks the block(s) {', '.join(missing)} ({BEGIN.format(name='NAME')} … {END})")
        out[doc] = (text, rewrite(text, names))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated block differs from the JSON")
    ap.add_argument("--print", dest="show", choices=sorted(BLOCKS), help="print one block and exit")
    args = ap.parse_args(argv)
    if args.show:
        sys.stdout.write(render(args.show))
        return 0
    stale = []
    for doc, (old, new) in expected_docs().items():
        if old == new:
            continue
        stale.append(doc)
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(old.splitlines(True), new.splitlines(True), doc, doc + " (JSON)")
            )
        else:
            DOCS[doc].write_text(new)
    if args.check:
        if stale:
            print(
                f"\n{', '.join(stale)}: generated blocks differ from bench/results/*.json; "
                "run .venv/bin/python bench/results_page.py"
            )
            return 1
        print("docs/RESULTS.md and README.md agree with bench/results/*.json")
        return 0
    print("rewrote " + ", ".join(stale) if stale else "nothing to change")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

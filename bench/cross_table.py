"""The cross table (issue 14): head scores from every method, each judged on every evaluation.

Head sets (rows): the files given with --heads NAME=FILE (by default the ones in bench/results/ that exist:
GRPO on key recall = the default heads before issue 14, distillation and ablation on the Apache-2.0 licence text,
GRPO on the reasoning task), three random masks and a per-layer-uniform mask (bench/showcase.py's). Every
set is converted with the same S and W (--sink/--window: the deployment setting), so only the ranking of
heads differs between rows.

Evaluations (columns), through the patched llama.cpp on the bundled SmolLM2-135M-Instruct, greedy:
* held-out reasoning accuracy (rlkv_edge.reasoning, EVAL_SEED): a chain of thought longer than S + W;
* held-out key-recall accuracy (rlkv_edge.tasks, EVAL_SEED);
* mean KL(full ‖ compressed) and top-1 agreement over a real English text none of the head sets was
  trained or calibrated on (the GPL-3 licence text, /usr/share/common-licenses/GPL-3).
at s = 0.25 / 0.5 / 0.75, plus the full cache and all-local (s = 1) rows.

It also answers the paper's question as this model does: overlap (Jaccard) of the full-head sets at
s = 0.5 and Spearman rank correlation between every two learned score tables, and each set's mean rank
over the three evaluations at each s (the rule that picks the shipped default heads, docs/RESULTS.md).

    .venv/bin/python bench/cross_table.py                        # ~1 h on 2 cores; --cache makes reruns incremental
    .venv/bin/python bench/cross_table.py --render bench/results/cross_table.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from showcase import default_threads, random_scores, uniform_scores

from rlkv_edge import tasks as T
from rlkv_edge.convert import convert_gguf
from rlkv_edge.evaluate import Task, compare_logprobs, read_text_file, run_tasks, text_logprobs
from rlkv_edge.heads import HeadScores, load_heads
from rlkv_edge.masks import full_head_mask
from rlkv_edge.models import bundled_model_path, open_model

RESULTS = Path(__file__).parent / "results"
SPARSITIES = (0.25, 0.5, 0.75)
TEXT = Path("/usr/share/common-licenses/GPL-3")
DEFAULT_HEADS = {  # name → file, used when it exists
    "grpo-reasoning": RESULTS / "heads_grpo_reasoning.json",
    "grpo-recall": RESULTS / "heads_grpo_recall.json",  # the default heads before issue 14
    "distill": RESULTS / "heads_distill_apache2.json",
    "ablation": RESULTS / "heads_ablation_apache2.json",
}
EVALS = ("reasoning", "recall", "kl")


@dataclass
class Row:
    """One head set at one sparsity."""

    heads: str
    sparsity: float
    reasoning: float | None = None
    recall: float | None = None
    kl: float | None = None
    top1: float | None = None
    ranks: dict[str, float] = field(default_factory=dict)
    detail: dict[str, dict[str, float]] = field(default_factory=dict)  # per task family: tokens, cut-off, longer


@dataclass
class Family:
    """A held-out task family: its problems, reward and answer length."""

    name: str
    problems: list[dict[str, str]]
    reward: Callable[..., list[float]]
    max_tokens: int

    def measure(self, llm: Any, sink: int, window: int) -> dict[str, float]:
        """Accuracy, mean answer tokens, cut-off share and the share of answers longer than S + W (the question
        alone through the chat template, greedy)."""
        tasks = [Task(p["question"], p["answer"]) for p in self.problems]
        res = run_tasks(
            llm, tasks, max_tokens=self.max_tokens, label="", sparsity=None, system=None, reward=self.reward
        )
        longer = sum(o["tokens"] > sink + window for o in res.outputs) / len(res.outputs)
        correct = [int(o["correct"]) for o in res.outputs]  # per problem: accuracy on a prefix of the problems
        out = {"accuracy": res.accuracy, "tokens": res.mean_output_tokens, "cut_off": res.cut_off, "longer": longer}
        return {**out, "correct": correct, "answer_tokens": [o["tokens"] for o in res.outputs]}


def head_sets(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Score tables by name: the given (or default) files, random masks, the per-layer-uniform mask."""
    files: dict[str, Path] = {}
    if args.heads:
        for spec in args.heads:
            name, _, path = spec.partition("=")
            files[name] = Path(path)
    else:
        files = {name: path for name, path in DEFAULT_HEADS.items() if path.is_file()}
    sets = {name: load_heads(path).scores for name, path in files.items()}
    shape = next(iter(sets.values())).shape
    for seed in range(args.n_random):
        sets[f"random-{seed}"] = random_scores(shape, seed)
    sets["uniform"] = uniform_scores(shape, 0)
    return sets


def digest(scores: np.ndarray) -> str:
    """Short hash of a score table (cache key)."""
    return hashlib.sha256(np.ascontiguousarray(scores, dtype=np.float32).tobytes()).hexdigest()[:16]


class Measurer:
    """Measures (head set, s, evaluation) triples, reusing and updating the --cache JSON (one entry each, so a
    new evaluation or head set measures only what is missing)."""

    def __init__(self, args: argparse.Namespace, src: Path, tmp: Path, log: Callable[[str], None]) -> None:
        self.args, self.src, self.tmp, self.log = args, src, tmp, log
        self.families: list[Family] = []
        if "reasoning" in args.evals:
            if args.family == "trace":  # Qwen2.5-Coder-0.5B's family (rlkv_edge/program_trace.py)
                from rlkv_edge import program_trace as P

                problems = P.make_problems(args.n_reasoning, P.EVAL_SEED)
                self.families.append(Family("reasoning", problems, P.trace_reward, P.MAX_TOKENS))
            else:  # the linked-code family (rlkv_edge/reasoning.py), at chance on SmolLM2
                from rlkv_edge import reasoning as R

                problems = R.make_problems(args.n_reasoning, R.EVAL_SEED)
                self.families.append(Family("reasoning", problems, R.chain_reward, 256))
        if "recall" in args.evals:
            problems = T.make_problems(args.n_recall, T.EVAL_SEED, args.recall_words, args.recall_lead)
            self.families.append(Family("recall", problems, T.recall_reward, 16))
        self.cache: dict[str, Any] = json.loads(args.cache.read_text()) if args.cache and args.cache.is_file() else {}
        self.settings = {
            "reasoning": f"{args.family}|{args.n_reasoning}",
            "recall": f"{args.n_recall}|{args.recall_words}|{args.recall_lead}",
            "kl": f"{args.text_tokens}",
        }  # fmt: skip
        self.tokens: list[int] = []
        self.base_lp: np.ndarray | None = None

    def convert(self, name: str, scores: np.ndarray) -> Path:
        """The bundled model converted with these scores at the common S and W."""
        dst = self.tmp / f"{name}.rlkv.gguf"
        if not dst.exists():
            n_layer, n_kv = scores.shape
            model = {"n_layer": n_layer, "n_head_kv": n_kv}
            table = HeadScores(scores, self.args.sink, self.args.window, name, model, {})
            convert_gguf(self.src, table, dst, progress=False)
        return dst

    def text_logprobs(self, path: Path, s: float) -> np.ndarray:
        """Log-probabilities over the first --text-tokens tokens of the held-out text."""
        if not self.tokens:
            probe = open_model(path, n_ctx=512, sparsity=0.0, n_threads=self.args.threads)
            try:
                body = read_text_file(TEXT).encode("utf-8")
                self.tokens = probe.tokenize(body, add_bos=True)[: self.args.text_tokens]
            finally:
                probe.close()
        n_ctx = len(self.tokens) + 16
        llm = open_model(path, n_ctx=n_ctx, sparsity=s, n_threads=self.args.threads, logits_all=True)
        try:
            return text_logprobs(llm, self.tokens)
        finally:
            llm.close()

    def _measure(self, path: Path, s: float, evals: list[str]) -> dict[str, float]:
        """The asked evaluations of one model file at one sparsity."""
        out: dict[str, float] = {}
        families = [f for f in self.families if f.name in evals]
        if families:
            llm = open_model(path, n_ctx=self.args.family_ctx, sparsity=s, n_threads=self.args.threads)
            try:
                for fam in families:
                    got = fam.measure(llm, self.args.sink, self.args.window)
                    out[fam.name] = got["accuracy"]
                    out[f"{fam.name}_detail"] = got  # type: ignore[assignment]
            finally:
                llm.close()
        if "kl" in evals:
            if self.base_lp is None:
                self.base_lp = self.text_logprobs(path, 0.0)
            lp = self.base_lp if s == 0.0 else self.text_logprobs(path, s)
            out["kl"], out["top1"] = compare_logprobs(self.base_lp, lp)
        return out

    def row(self, name: str, scores: np.ndarray, s: float) -> Row:
        """One row: cached evaluations from --cache, the missing ones measured (and cached)."""
        ident = f"{name}|{digest(scores) if 0 < s < 1 else '-'}|{s:g}|{self.args.sink}|{self.args.window}"
        keys = {ev: f"{ev}|{ident}|{self.settings[ev]}" for ev in self.args.evals}
        missing = [ev for ev, k in keys.items() if k not in self.cache]
        if missing:
            got = self._measure(self.convert(name, scores), s, missing)
            for ev in missing:
                self.cache[keys[ev]] = {"kl": got["kl"], "top1": got["top1"]} if ev == "kl" else got[ev]
                if f"{ev}_detail" in got:
                    self.cache[keys[ev] + "|detail"] = got[f"{ev}_detail"]
            if self.args.cache:
                self.args.cache.write_text(json.dumps(self.cache, indent=1))
        row = Row(name, s)
        for ev, k in keys.items():
            value = self.cache[k]
            if ev == "kl":
                row.kl, row.top1 = value["kl"], value["top1"]
            else:
                setattr(row, ev, value)
                row.detail[ev] = self.cache.get(k + "|detail", {})
        shown = [f"{ev} {getattr(row, ev):.4f}" for ev in (*EVALS, "top1") if getattr(row, ev) is not None]
        self.log(f"s={s:g} {name}: " + ", ".join(shown))
        return row


def add_ranks(rows: list[Row]) -> None:
    """Each row's rank (1 = best) among the head sets at its sparsity, per evaluation, and their mean."""
    for s in {r.sparsity for r in rows}:
        at = [r for r in rows if r.sparsity == s and 0 < s < 1]
        evals = [ev for ev in EVALS if at and getattr(at[0], ev) is not None]
        for ev in evals:
            values = np.array([-(getattr(r, ev) or 0.0) if ev != "kl" else (r.kl or 0.0) for r in at])
            # average ranks for ties: the mean of the positions the tied values occupy
            order = values.argsort(kind="stable")
            pos = np.empty(len(at))
            pos[order] = np.arange(1, len(at) + 1)
            for v in np.unique(values):
                pos[values == v] = pos[values == v].mean()
            for r, p in zip(at, pos, strict=True):
                r.ranks[ev] = float(p)
        for r in at:
            r.ranks["mean"] = float(np.mean([r.ranks[ev] for ev in evals]))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score tables (average ranks for ties)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        x = x.ravel().astype(np.float64)
        r = np.empty(x.size)
        r[x.argsort(kind="stable")] = np.arange(x.size)
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def similarity(sets: dict[str, np.ndarray], learned: list[str], s: float = 0.5) -> list[dict[str, Any]]:
    """Jaccard overlap of the full-head sets at s and Spearman correlation, for every two learned sets."""
    out = []
    for i, a in enumerate(learned):
        for b in learned[i + 1 :]:
            ma, mb = full_head_mask(sets[a], s), full_head_mask(sets[b], s)
            jac = float((ma & mb).sum() / max(1, (ma | mb).sum()))
            out.append({"a": a, "b": b, "jaccard": jac, "spearman": spearman(sets[a], sets[b])})
    return out


def markdown(saved: dict[str, Any]) -> str:
    """The tables of a results dict: the cross table per s, the mean ranks, the similarity of head sets."""
    rows = [Row(**r) for r in saved["rows"]]
    lines = [
        f"S={saved['sink']}, W={saved['window']}; held-out key recall: {saved['n_recall']} problems (filler words "
        f"before / after the code: {saved.get('recall_words')}); KL / top-1 over {saved['text_tokens']} tokens of "
        f"{saved['text']}; {saved['threads']} threads, {saved['machine']}",
        "",
        "| s | heads | reasoning acc. | key-recall acc. | mean KL | top-1 | rank R / K / KL | mean rank |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rk = "/".join(f"{r.ranks[e]:g}" if e in r.ranks else "–" for e in EVALS) if r.ranks else "–"
        mean = f"{r.ranks['mean']:.2f}" if r.ranks else "–"

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{100 * v:.1f}%"

        kl = "–" if r.kl is None else f"{r.kl:.4f}"
        cells = [f"{r.sparsity:g}", r.heads, pct(r.reasoning), pct(r.recall), kl, pct(r.top1), rk, mean]
        lines.append("| " + " | ".join(cells) + " |")
    sim = saved.get("similarity") or []
    if sim:
        lines += ["", "| head sets | full-set overlap at s=0.5 (Jaccard) | Spearman ρ of the scores |"]
        lines += ["|---|---:|---:|"]
        lines += [f"| {d['a']} vs {d['b']} | {d['jaccard']:.2f} | {d['spearman']:+.2f} |" for d in sim]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", action="append", default=None, metavar="NAME=FILE", help="a head set (repeatable)")
    ap.add_argument("--sink", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sparsity", type=float, action="append", default=None, help="repeatable (default .25 .5 .75)")
    ap.add_argument("--n-reasoning", type=int, default=40, help="held-out reasoning problems")
    ap.add_argument("--only", default=None, help="measure only these rows (comma-separated: 'full cache', a head "
                    "set's name, 'all local')")  # fmt: skip
    ap.add_argument("--family-ctx", type=int, default=2048, help="n_ctx for the task families")
    ap.add_argument("--family", choices=("chain", "trace"), default="chain", help="the reasoning family")
    ap.add_argument("--n-recall", type=int, default=30, help="held-out key-recall problems")
    ap.add_argument("--recall-words", type=int, default=None, help="key recall: filler words after the code")
    ap.add_argument("--recall-lead", type=int, default=None, help="key recall: filler words before the code")
    ap.add_argument("--text-tokens", type=int, default=2048, help="tokens of the held-out text for KL")
    ap.add_argument("--n-random", type=int, default=3)
    ap.add_argument(
        "--evals", default="recall,kl", help="comma-separated subset of reasoning,recall,kl (reasoning: see RESULTS)"
    )
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--model", type=Path, default=None, help="unconverted GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cross_table.json")
    ap.add_argument("--cache", type=Path, default=None, help="JSON cache of measured rows (reused when it matches)")
    ap.add_argument("--render", type=Path, default=None, metavar="JSON", help="print the tables of a results file")
    args = ap.parse_args(argv)
    args.sparsity = args.sparsity or list(SPARSITIES)
    args.evals = [e for e in EVALS if e in args.evals.split(",")]
    words, lead = T.recall_size(args.sink, args.window)  # default: sized for S and W (tasks.RECALL_SIZES)
    args.recall_words = words if args.recall_words is None else args.recall_words
    args.recall_lead = lead if args.recall_lead is None else args.recall_lead
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure, print and save the cross table (or reprint a saved one with --render)."""
    args = parse_args(argv)
    if args.render is not None:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    src = args.model or bundled_model_path()
    sets = head_sets(args)
    learned = [n for n in sets if not n.startswith("random-") and n != "uniform"]
    log(f"head sets: {', '.join(sets)}; S={args.sink}, W={args.window}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rlkv-cross-") as tmp:
        m = Measurer(args, src, Path(tmp), log)
        first = learned[0]
        wanted = set(args.only.split(",")) if args.only else None
        if wanted is None or "full cache" in wanted:
            rows.append(m.row("full cache", sets[first], 0.0))
        for s in args.sparsity:
            rows += [m.row(name, scores, s) for name, scores in sets.items() if wanted is None or name in wanted]
        if wanted is None or "all local" in wanted:
            rows.append(m.row("all local", sets[first], 1.0))
    add_ranks(rows)
    saved: dict[str, Any] = {
        "model": src.name,
        "sink": args.sink,
        "window": args.window,
        "n_reasoning": args.n_reasoning,
        "family": args.family,
        "n_recall": args.n_recall,
        "recall_words": [args.recall_lead, args.recall_words],
        "text": TEXT.name,
        "text_tokens": len(m.tokens),
        "sparsities": args.sparsity,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "elapsed_s": round(time.time() - t0, 1),
        "rows": [r.__dict__ for r in rows],
        "similarity": similarity(sets, learned),
    }
    table = markdown(saved)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**saved, "table": table}, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

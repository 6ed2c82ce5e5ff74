"""The numbers quoted in README.md and on docs/RESULTS.md's first screen agree with the JSON they cite.

No model, no native library: bench/results_page.py reads bench/results/*.json and the two Markdown files.
Three independent checks:
* the generated blocks are what the JSON gives today (bench/results_page.py --check);
* every KV MiB / × f16 / KL / key-recall / tg number in a generated table, and every "N MiB" and "KL x" in the
  prose blocks, is found in a JSON file that the same row or block links, read here without the generator;
* outside the generated blocks, the first screen and README's "Results" section carry no hand-typed result
  numbers (percentages, ratios, MiB, t/s, KL-like decimals), so nothing can be quoted around the generator.
And the README's first `chat` example runs a configuration measured at 8k that no other measured point
dominates (no more KV memory for no more KL).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
README = ROOT / "README.md"
FIRST_SCREEN_END = "<!-- end of first screen -->"
BLOCK_RE = re.compile(r"<!-- table:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /table -->", re.S)
LINK_RE = re.compile(r"\]\((?:\.\./)?bench/results/(?P<name>[\w.-]+)\.json\)")


@pytest.fixture(scope="module")
def page():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "bench" / "results_page.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["results_page"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def _git_ok() -> bool:
    r = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=ROOT, capture_output=True, check=False)
    return r.returncode == 0


def _json(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())


def _first_screen() -> str:
    text = RESULTS_MD.read_text()
    assert FIRST_SCREEN_END in text, f"docs/RESULTS.md lost its {FIRST_SCREEN_END!r} marker"
    return text.split(FIRST_SCREEN_END)[0]


def _readme_results() -> str:
    text = README.read_text()
    m = re.search(r"^## Results\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Results' section"
    return m.group(1)


def _blocks() -> list[tuple[str, str]]:
    return [(m["name"], m["body"]) for t in (_first_screen(), _readme_results()) for m in BLOCK_RE.finditer(t)]


# ------------------------------------------------------------------------------------------ what JSON holds


def _kv_values(names: set[str]) -> dict[str, set[str]]:
    """Every KV MiB, × f16, KL and accuracy the cited frontier-style JSON files hold, formatted as the page does."""
    out: dict[str, set[str]] = {"mib": set(), "ratio": set(), "kl": set(), "acc": set()}
    for name in names:
        d = _json(name)
        if "n_facts" in d:  # bench/recall_depth.py's layout: rows with their KV bytes against the f16 cache's
            for r in d["rows"]:
                out["mib"].add(f"{r['kv_bytes'] / 2**20:.1f}")
                out["ratio"].add(f"{r['kv_bytes'] / d['kv_bytes_f16']:.2f}")
                out["acc"].add(f"{100 * r['accuracy']:.0f}%")
            continue
        points = d.get("points")
        if not points:
            continue
        f16 = [p["kv_bytes"] for p in points if p["config"]["type_k"] == "f16" and p["config"]["sparsity"] == 0]
        for p in points:
            out["mib"].add(f"{p['kv_bytes'] / 2**20:.1f}")
            for ref in f16:
                out["ratio"].add(f"{p['kv_bytes'] / ref:.2f}")
            kl = p.get("mean_kl")
            if kl is not None:
                out["kl"].add("0" if kl == 0 else f"{kl:.4f}")
            if p.get("accuracy") is not None:
                out["acc"].add(f"{100 * p['accuracy']:.0f}%")
    return out


def _floats(obj: Any) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _floats(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _floats(v)]
    return []


def _tg_values(names: set[str]) -> set[str]:
    out = set()
    for name in names:
        for r in _json(name).get("results", []):
            out |= {f"{t:.1f}" for t in r.get("tg", {}).values()}
    return out


# ------------------------------------------------------------------------------------------ tests


def test_generated_blocks_match_the_json(page) -> None:  # type: ignore[no-untyped-def]
    if not _git_ok():
        pytest.skip("the blocks name git commits; no git repository here")
    for doc, (old, new) in page.expected_docs().items():
        assert old == new, f"{doc} differs from bench/results/*.json: run .venv/bin/python bench/results_page.py"


def test_table_cells_are_in_the_json_each_row_links() -> None:
    """Each table row: KV MiB, × f16, KL and key recall are values of a JSON the row links (read directly)."""
    checked = 0
    for name, body in _blocks():
        if name not in ("smollm2", "readme"):
            continue
        for line in body.splitlines():
            if not line.startswith("| ") or line.startswith("| config"):
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            # A row cites the JSON it links; README's rows have no JSON column and cite the block's list.
            linked = set(LINK_RE.findall(line)) or set(LINK_RE.findall(body))
            have = _kv_values(linked)
            mib, ratio, kl = cells[1], cells[2], cells[3]
            assert mib in have["mib"], f"{name}: KV MiB {mib} of {cells[0]!r} is in none of {sorted(linked)}"
            assert ratio in have["ratio"], f"{name}: × f16 {ratio} of {cells[0]!r} is in none of {sorted(linked)}"
            if kl != "–":
                assert kl in have["kl"], f"{name}: KL {kl} of {cells[0]!r} is in none of {sorted(linked)}"
            for acc in re.findall(r"\d+%", cells[5]):
                assert acc in have["acc"], f"{name}: key recall {acc} of {cells[0]!r} is in none of {sorted(linked)}"
            if name == "smollm2" and cells[7] != "–":
                tg = cells[7].split()[0]
                assert tg in _tg_values(linked), f"tg {tg} of {cells[0]!r} is in none of {sorted(linked)}"
            checked += 1
    assert checked >= 15, f"only {checked} table rows checked: did the tables lose their rows or links?"


def test_prose_numbers_are_in_the_json_the_block_links() -> None:
    """The verdict's and README's "N MiB", "KL x", "N t/s" and "N.NN×" quotes: each is a value of a JSON the block
    links (a ratio may also be one KV size over another's)."""
    checked = 0
    for name, body in _blocks():
        linked = set(LINK_RE.findall(body))
        prose = "\n".join(line for line in body.splitlines() if not line.startswith("|"))
        have = _kv_values(linked)
        floats = [x for n in linked for x in _floats(_json(n))]
        for tg in re.findall(r"(\d+\.\d) t/s", prose):
            assert tg in {f"{x:.1f}" for x in floats}, f"{name}: '{tg} t/s' is in none of the JSON the block links"
            checked += 1
        for ratio in re.findall(r"(\d+\.\d\d)×", prose):
            ok = ratio in have["ratio"] or ratio in {f"{x:.2f}" for x in floats}
            assert ok, f"{name}: '{ratio}×' is in none of the JSON the block links"
            checked += 1
        for mib in re.findall(r"(\d+\.\d) MiB", prose):
            assert mib in have["mib"], f"{name}: '{mib} MiB' is in none of the JSON the block links"
            checked += 1
        for kl in re.findall(r"KL (\d\.\d{4})", prose):
            assert kl in have["kl"], f"{name}: 'KL {kl}' is in none of the JSON the block links"
            checked += 1
    assert checked >= 10, f"only {checked} prose numbers checked"


# Result-looking numbers: a percentage, a ratio, a size, a speed, or a KL-like decimal.
RESULT_NUMBER = re.compile(r"\d+(?:\.\d+)?\s*(?:%|×|MiB|GiB|t/s)|(?<![\w.=])0\.\d{3,}")


def test_no_result_numbers_outside_generated_blocks() -> None:
    for where, text in (("docs/RESULTS.md first screen", _first_screen()), ("README.md Results", _readme_results())):
        outside = BLOCK_RE.sub("", text)
        found = RESULT_NUMBER.findall(outside)
        assert not found, f"{where} quotes {found} outside a generated block: put it in bench/results_page.py"


def _chat_config(line: str) -> dict[str, Any]:
    args = shlex.split(line)
    cfg: dict[str, Any] = {"ctx": None, "s": 0.5, "sink": 64, "window": 256, "k": "f16", "v": "f16"}
    names = {"--ctx": "ctx", "-c": "ctx", "--sparsity": "s", "-s": "s", "--sink": "sink", "--window": "window"}
    names |= {"-ctk": "k", "--cache-type-k": "k", "-ctv": "v", "--cache-type-v": "v"}
    for flag, value in itertools.pairwise(args):
        if flag in names:
            cfg[names[flag]] = value
    cfg["s"] = float(cfg["s"])
    for key in ("ctx", "sink", "window"):
        cfg[key] = None if cfg[key] is None else int(cfg[key])
    return cfg


def test_readme_first_chat_example_is_measured_and_not_dominated(page) -> None:  # type: ignore[no-untyped-def]
    """The file default of the shipped heads is s=0.5 S64/W256 f16 (dominated at 8k by q8_0): not the first example."""
    heads = json.loads((ROOT / "rlkv_edge" / "data" / "default_heads.json").read_text())
    line = next(ln for ln in README.read_text().splitlines() if ln.startswith("rlkv-edge chat "))
    cfg = _chat_config(line)
    assert cfg["ctx"] == 8192, f"the first chat example should give --ctx 8192, the measured context: {line}"
    assert (heads["sink_size"], heads["window_size"]) == (64, 256), "the heads file's S/W changed: update this test"
    pool = page.front_8k()
    match = [
        p
        for p in pool
        if float(p["config"]["sparsity"]) == cfg["s"]
        and (cfg["s"] == 0 or (p["config"]["sink"], p["config"]["window"]) == (cfg["sink"], cfg["window"]))
        and (p["config"]["type_k"], p["config"]["type_v"]) == (cfg["k"], cfg["v"])
    ]
    assert match, f"the first chat example runs a configuration not measured at 8k: {line}"
    dom = page.dominators(match[0], pool)
    assert not dom, f"{line!r} is dominated at 8k by {[page.describe(q) for q in dom]}"


def test_the_default_would_fail_the_chat_check(page) -> None:  # type: ignore[no-untyped-def]
    """The check above has teeth: the old first example (the file default) is dominated."""
    pool = page.front_8k()
    default = next(p for p in pool if p["config"]["label"] == "rlkv s=0.5 S64/W256")
    assert any(page.describe(q) == "q8_0 K+V" for q in page.dominators(default, pool))


def test_qwen_block_is_pending_until_its_json_exists(page, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(page, "RESULTS", tmp_path)
    page.load.cache_clear()
    try:
        assert page.render("qwen").startswith("**Pending.**")
        d = _json("frontier_8k")
        (tmp_path / "qwen_front_32k.json").write_text(json.dumps(d))
        monkeypatch.setattr(page, "commit_of", lambda name: "uncommitted")
        out = page.render("qwen")
        assert "Pending" not in out
        assert "[qwen_front_32k](../bench/results/qwen_front_32k.json)" in out
        assert "| 98.6 | 0.53 | 0.0049 |" in out  # q8_0 K+V row, rendered from the file
    finally:
        page.load.cache_clear()


def test_a_superseded_table_leaves_the_first_screen_once_replaced(page, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The S16/W64 cross table shows until the S16/W128 one exists; then only a pointer to its note is left."""
    monkeypatch.setattr(page, "RESULTS", tmp_path)
    monkeypatch.setattr(page, "commit_of", lambda name: "uncommitted")
    page.load.cache_clear()
    try:
        (tmp_path / "qwen_cross_s05.json").write_text(json.dumps(_json("qwen_cross_s05")))
        alone = page.render("qwen")
        assert "S16/W64, 1 threads." in alone and "Superseded" not in alone
        (tmp_path / "qwen_cross_s05_w128.json").write_text(json.dumps(_json("qwen_cross_s05_w128")))
        page.load.cache_clear()
        both = page.render("qwen")
        assert "S16/W64, 1 threads." not in both and "S16/W128, 1 threads." in both
        assert "Superseded, not shown: [qwen_cross_s05](../bench/results/qwen_cross_s05.json)" in both
        assert "(notes/qwen-program-trace-w64.md)" in both
    finally:
        page.load.cache_clear()

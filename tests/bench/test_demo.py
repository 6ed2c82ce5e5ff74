"""`make demo` (bench/demo.py): its short training run is labelled as mechanics, its quality numbers use the
shipped heads, and its 8k table is the README's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _demo():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("demo", ROOT / "bench" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mechanics_table_reads_the_checkpoint_and_says_what_it_is(tmp_path):
    demo = _demo()
    ckpt = tmp_path / "ckpt"
    for step in (1, 2):
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
    hist = [
        {"step": 1, "rewards/recall_reward/mean": 0.5, "reward_std": 0.5, "frac_reward_zero_std": 0.0,
         "rlkv/mean_gate": 1.0, "rlkv/heads_below_half": 0, "step_time": 3.0},
        {"loss": 0.1, "step": 2},  # a log entry without gates is not a step row
        {"step": 2, "rewards/recall_reward/mean": 1.0, "reward_std": 0.0, "frac_reward_zero_std": 1.0,
         "rlkv/mean_gate": 0.99, "rlkv/heads_below_half": 0, "step_time": 4.0},
    ]  # fmt: skip
    (ckpt / "checkpoint-1" / "trainer_state.json").write_text(json.dumps({"log_history": hist[:1]}))
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"log_history": hist}))
    rows = demo.log_rows(ckpt)
    assert [r["step"] for r in rows] == [1, 2]
    table = demo.mechanics_table(rows, [[0.98, 0.98, 0.98]] * 2)
    assert table.startswith("2-step training run: mechanics only, not a quality result")
    assert "| 1 | 0.500 | 0.500 | 0% | 1.0000 | 0 | 3s |" in table
    assert "| 2 | 1.000 | 0.000 | 100% | 0.9900 | 0 | 4s |" in table
    assert "6 heads, α from 0.9800 to 0.9800 (1 distinct)" in table
    assert "not used below" in table
    assert demo.log_rows(tmp_path / "none") == []


def test_quality_reference_is_the_cross_tables_shipped_heads_row():
    demo = _demo()
    saved = json.loads((ROOT / "bench" / "results" / "cross_table.json").read_text())
    distill = next(r for r in saved["rows"] if r["heads"] == "distill" and r["sparsity"] == demo.QUALITY_S)
    line = demo.cross_table_reference()
    assert f"shipped heads {100 * distill['recall']:.0f}% / {distill['kl']:.4f}" in line
    assert "random seed 0" in line and "all-local" in line and "full cache" in line
    # the shipped default heads are the cross table's distill heads
    shipped = json.loads((ROOT / "rlkv_edge" / "data" / "default_heads.json").read_text())
    assert shipped["method"] == "rlkv-distill"


def test_front_table_is_the_readmes():
    demo = _demo()
    readme = (ROOT / "README.md").read_text()
    body = readme.split("<!-- table:readme -->\n", 1)[1].split("<!-- /table -->", 1)[0]
    assert demo.front_table().strip() == body.strip()


def test_demo_shows_no_default_setting_as_recommended():
    demo = _demo()
    # the chat answer runs at the front's rlkv point, not the file's dominated default (s=0.5 S64/W256, f16)
    flags = " ".join(demo.CHAT_FLAGS)
    assert "-s 0.75" in flags and "--window 1024" in flags and "-ctk q8_0 -ctv q4_0" in flags

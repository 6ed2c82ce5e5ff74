"""`rlkv-edge bench`: numbers for every cell, one process, ratios against the uncompressed model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from app_fixtures import ENV, run_cli, smollm2_rlkv, tiny_rlkv
from gguf_fixtures import smollm2_path, write_tiny_gguf

from rlkv_edge.runtime import grouped_decode


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_rlkv(tmp_path_factory.mktemp("bench") / "tiny-rlkv.gguf").path


def _check_cells(out: dict, labels: list[str], depths: list[int]) -> None:
    assert [r["label"] for r in out["results"]] == labels
    for r in out["results"]:
        assert r["kv_mib"] > 0
        for kind in ("pp", "tg", "pp_ratio", "tg_ratio"):
            assert sorted(int(d) for d in r[kind]) == depths, (r["label"], kind)
            assert all(v > 0 for v in r[kind].values()), (r["label"], kind)


def test_bench_json_tiny(tiny: Path) -> None:
    args = ["-s", "0.5", "-s", "1", "--depths", "0,48", "-p", "32", "-n", "8", "-t", "2", "--ctx", "1024", "--json"]
    r = run_cli("bench", str(tiny), *args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    _check_cells(out, ["none", "s=0.5", "s=1"], [0, 48])
    none, half, one = out["results"]
    assert none["sparsity"] == 0.0 and none["n_full_heads"] == 4
    assert half["n_full_heads"] == 2 and one["n_full_heads"] == 0
    assert one["kv_bytes_full"] == 0 and one["kv_bytes_local"] > 0
    assert none["kv_ratio"] == 1.0 and one["kv_mib"] < half["kv_mib"] < none["kv_mib"]
    assert none["pp_ratio"]["0"] == 1.0


def test_bench_fill_mark_and_traffic_model(tiny: Path) -> None:
    """--fill mark reaches a depth without a prefill; every tg cell carries the traffic model's prediction."""
    args = ["-s", "0.5", "--depths", "0,600", "-p", "16", "-n", "4", "-t", "2", "--ctx", "1024", "--fill", "mark"]
    r = run_cli("bench", str(tiny), *args, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    _check_cells(out, ["none", "s=0.5"], [0, 600])
    none, half = out["results"]
    assert none["tg_ratio_predicted"] == {"0": 1.0, "600": 1.0}
    # at depth 600 the local heads read S + W cells instead of ~600: predicted faster; at depth 0 no gain
    assert half["tg_ratio_predicted"]["600"] > 1.0 >= half["tg_ratio_predicted"]["0"] * 0.99
    assert half["decode_bytes_per_token"]["600"] < none["decode_bytes_per_token"]["600"]
    assert half["decode"]["n_full"] == 2 and half["decode"]["ring_cells"] > 0


@pytest.mark.parametrize("env, kernels", [("1", ["ggml", "grouped"]), ("force", ["grouped", "grouped"]),
                                          ("0", ["ggml", "ggml"])])  # fmt: skip
def test_bench_says_which_kernel_decoded(tiny: Path, env: str, kernels: list[str]) -> None:
    """Each result names the kernel its tokens were decoded on: the grouped path serves the rlkv cache, and the
    stock cache too with RLKV_DECODE_ATTN=force (so every row can run on one kernel); ggml's with =0."""
    if not grouped_decode():
        pytest.skip("this CPU lacks AVX2/FMA: the grouped decode path is off")
    args = ["-s", "0.5", "--depths", "0", "-p", "8", "-n", "4", "-t", "2", "--ctx", "512", "--json"]
    r = run_cli("bench", str(tiny), *args, env={**ENV, "RLKV_DECODE_ATTN": env})
    assert r.returncode == 0, r.stderr
    assert [x["decode_kernel"] for x in json.loads(r.stdout)["results"]] == kernels


def test_bench_table_with_baseline_file(tiny: Path, tmp_path: Path) -> None:
    base = write_tiny_gguf(tmp_path / "tiny.gguf").path
    r = run_cli("bench", str(tiny), "--baseline", str(base), "--depths", "0", "-p", "16", "-n", "4", "-t", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("| model | sparsity | K/V | full heads | KV MiB | test | t/s | × base | × predicted |")
    assert any(ln.startswith("| baseline | none | f16/f16 | 4/4 |") and "pp16" in ln for ln in lines)
    assert any(ln.startswith("| s=0.5 | 0.5 | f16/f16 | 2/4 |") and "tg4" in ln for ln in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "0,x"], "--depths must be"),
        (["--depths", "4000", "--ctx", "1024"], "does not fit --ctx"),
        (["-s", "2"], "--sparsity must be in [0, 1]"),
        (["--fill", "guess"], "Invalid value for '--fill': 'guess' is not one of 'compute', 'mark'"),
    ],
)
def test_bench_bad_input(tiny: Path, args: list[str], message: str) -> None:
    r = run_cli("bench", str(tiny), *args)
    assert r.returncode != 0
    assert r.stderr.startswith("rlkv-edge: error:") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bench_sparsity_needs_metadata(tmp_path: Path) -> None:
    r = run_cli("bench", str(smollm2_path()), "-s", "0.5")
    assert r.returncode != 0 and "no rlkv metadata" in r.stderr


@pytest.mark.slow
def test_bench_json_smollm2(tmp_path: Path) -> None:
    model = smollm2_rlkv(tmp_path / "smollm2.rlkv.gguf")
    r = run_cli(
        "bench",
        str(model),
        "-s",
        "0.5",
        "--depths",
        "0,2048",
        "--ctx",
        "4096",
        "-t",
        "2",
        "--json",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    _check_cells(out, ["none", "s=0.5"], [0, 2048])
    assert out["results"][1]["kv_ratio"] < 0.7

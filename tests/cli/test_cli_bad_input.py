"""Every bad command line gets one line on stderr and exit code 2 (issue 16), and a model of an
architecture without rlkv support runs uncompressed while compression flags refuse, naming it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_fixtures import run_cli
from gguf_fixtures import write_tiny_gguf
from typer.testing import CliRunner

from rlkv_edge.cli import app


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A converted tiny llama, and a tiny 'minicpm' (a llama.cpp architecture rlkv does not support)."""
    root = tmp_path_factory.mktemp("bad-input")
    scores = np.array([[0.9, 0.2], [0.6, 0.4]], dtype=np.float32)
    rlkv = write_tiny_gguf(root / "tiny.rlkv.gguf", rlkv=dict(scores=scores, sparsity=0.5, sink=4, window=16))
    other = write_tiny_gguf(root / "tiny-minicpm.gguf", arch="minicpm")
    (root / "heads.json").write_text('{"format": "rlkv-heads", "version": 1, "scores": [[1, 0], [0.5, 0.2]]}')
    return {"rlkv": rlkv.path, "minicpm": other.path, "heads": root / "heads.json", "root": root}


BAD = [
    ["chat", "{rlkv}", "-s", "half"],
    ["chat", "{rlkv}", "-s", "1.5"],
    ["chat", "{rlkv}", "-s", "nan"],
    ["chat", "{rlkv}", "--ctx", "0"],
    ["chat", "{rlkv}", "--ctx", "abc"],
    ["chat", "{rlkv}", "--threads", "0"],
    ["chat", "{rlkv}", "--cache-type-k", "q9_0"],
    ["chat", "{rlkv}", "-ctv", "f8"],
    ["chat", "{rlkv}", "--kv-budget", "lots"],
    ["chat", "{rlkv}", "--kv-budget", "1MiB", "-s", "0.5"],
    ["chat", "{rlkv}", "--sink", "-1"],
    ["chat", "{rlkv}", "--window", "0"],
    ["chat", "{rlkv}", "--n-gpu-layers", "-2"],
    ["chat", "{rlkv}", "--no-such-option"],
    ["chat", "{root}/missing.gguf", "-p", "x"],
    ["serve", "{rlkv}", "--port", "0"],
    ["serve", "{rlkv}", "--port", "http"],
    ["bench", "{rlkv}", "--depths", "a,b"],
    ["bench", "{rlkv}", "--reps", "0", "--depths", "0"],
    ["bench", "{rlkv}", "-s", "2"],
    ["bench"],
    ["eval", "{rlkv}"],
    ["eval", "{rlkv}", "--text", "{root}/missing.txt"],
    ["eval", "{rlkv}", "--tasks", "x.jsonl", "--max-tokens", "0"],
    ["inspect", "{rlkv}", "-s", "-0.5"],
    ["inspect", "{rlkv}", "--cache-type-k", "q9_0"],
    ["inspect", "{root}/missing.gguf"],
    ["inspect", "{heads}"],
    ["convert", "{rlkv}"],
    ["convert", "{rlkv}", "--mask", "{root}/missing.json"],
    ["convert", "{minicpm}", "--mask", "{heads}", "-o", "{root}/out.gguf"],
    ["convert", "{rlkv}", "--mask", "{heads}", "-s", "x"],
    ["nonsense-command"],
]


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a).replace("{", "").replace("}", ""))
def test_bad_input_is_one_line_and_exit_2(models: dict[str, Path], args: list[str]) -> None:
    """One stderr line starting `rlkv-edge: error:`, nothing else, exit code 2."""
    argv = [a.format(**models) for a in args]
    r = CliRunner().invoke(app, argv)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (argv, r.output)
    assert len(lines) == 1 and lines[0].startswith("rlkv-edge: error: "), (argv, r.stderr)
    assert "Traceback" not in r.output and "╭" not in r.output


def test_bad_float_names_the_option(models: dict[str, Path]) -> None:
    """`-s half` says which option and why, on one line (not click's usage box)."""
    r = CliRunner().invoke(app, ["chat", str(models["rlkv"]), "-s", "half"])
    assert "'--sparsity'" in r.stderr and "see 'rlkv-edge chat --help'" in r.stderr


def test_unsupported_architecture_runs_uncompressed(models: dict[str, Path]) -> None:
    """A GGUF without rlkv keys of an architecture rlkv cannot compress still chats (llama.cpp runs it)."""
    r = run_cli("chat", str(models["minicpm"]), "-p", "the dog", "-n", "4", "--seed", "1", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


@pytest.mark.parametrize("flag", [["--sparsity", "0.5"], ["--kv-budget", "1MiB"], ["--window", "8"]])
def test_compression_flags_name_the_architecture(models: dict[str, Path], flag: list[str]) -> None:
    """--sparsity / --kv-budget / --window on it: one line naming the architecture, before any loading."""
    r = run_cli("chat", str(models["minicpm"]), "-p", "x", *flag)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "architecture 'minicpm'" in lines[0] and flag[0] in lines[0], r.stderr


def test_native_refusal_reason_reaches_the_user(models: dict[str, Path], tmp_path: Path) -> None:
    """The runtime's own reason, not a generic "could not load" (llama-cpp-python silences fd 2)."""
    from rlkv_edge import runtime
    from rlkv_edge.errors import ModelError

    scores = np.array([[0.9, 0.2], [0.6, 0.4]], dtype=np.float32)
    bad = write_tiny_gguf(
        tmp_path / "bad-perm.gguf",
        rlkv=dict(scores=scores, sparsity=0.5, sink=4, window=16, perm=np.array([[0, 0], [0, 1]])),
    )
    with pytest.raises(ModelError, match=r"rlkv\.head_perm: layer 0 is not a permutation of 0\.\.1"):
        runtime.load(bad.path, n_ctx=64)


def test_context_refusal_reason_reaches_the_user(models: dict[str, Path]) -> None:
    """A refusal at context creation (q8_0 K cache on head dim 16) names llama.cpp's reason in one line."""
    r = run_cli("chat", str(models["rlkv"]), "-ctk", "q8_0", "-p", "x")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "K cache type q8_0 with block size 32 does not divide n_embd_head_k=16" in lines[0]

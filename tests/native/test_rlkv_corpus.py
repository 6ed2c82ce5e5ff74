"""One set of rules for rlkv.* metadata: the runtime (native loader), `inspect` and chat's pre-checks
(the Python twin in rlkv_edge/metadata.py) accept the same files and refuse the rest with the same
one-line reason, over a corpus of corrupted files (tests/rlkv_corpus.py). Each runtime load runs in its
own subprocess with a timeout, so a crash or a hang fails the test instead of the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gguf_fixtures import write_tiny_gguf
from rlkv_corpus import corpus_base, write_corpus
from typer.testing import CliRunner

from rlkv_edge.cli import app
from rlkv_edge.errors import MetadataError
from rlkv_edge.metadata import read_rlkv_info
from rlkv_edge.models import check_loadable, read_model

_WORKER = """
import json, sys
from rlkv_edge import runtime
from rlkv_edge.errors import RlkvError
try:
    runtime.load(sys.argv[1], n_ctx=64, n_threads=1).close()
    result = "OK"
except RlkvError as e:
    result = str(e)
print("@@" + json.dumps(result))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The whole corpus (≥ 300 files)."""
    root = tmp_path_factory.mktemp("corpus")
    files = write_corpus(corpus_base(root / "base.gguf", write_tiny_gguf), root / "files")
    assert len(files) >= 300
    return files


def _native(path: Path) -> str:
    """The runtime's verdict in a subprocess: "OK" or its one-line error."""
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert proc.returncode == 0 and len(lines) == 1, f"{path.name}: rc {proc.returncode}\n{proc.stderr[-1500:]}"
    return str(json.loads(lines[0][2:]))


def _python(path: Path) -> str:
    """`read_rlkv_info`'s verdict, which chat's pre-check (`check_loadable`) must share."""
    try:
        read_rlkv_info(path)
        verdict = "OK"
    except MetadataError as e:
        verdict = str(e)
    try:
        check_loadable(read_model(path), {})
        pre = "OK"
    except MetadataError as e:
        pre = str(e)
    assert pre == verdict, path.name
    return verdict


def _inspect(path: Path) -> str:
    """`rlkv-edge inspect FILE`: exit 0, or one line on stderr and exit 2."""
    r = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    if r.exit_code == 0:
        return "OK"
    assert r.exit_code == 2, (path.name, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlkv-edge: error: "), (path.name, r.stderr)
    return lines[0].removeprefix("rlkv-edge: error: ")


def _check(files: list[Path]) -> dict[str, int]:
    """Every file: the same verdict from the runtime, read_rlkv_info, chat's pre-check and inspect."""
    counts = {"ok": 0, "refused": 0}
    for path in files:
        native = _native(path)
        assert _python(path) == native, path.name
        assert _inspect(path) == " ".join(native.split()), path.name  # the CLI prints one line
        counts["ok" if native == "OK" else "refused"] += 1
    return counts


def test_corpus_sample_agrees(corpus: list[Path]) -> None:
    """A sample: every fifth file of the corpus (deterministic variants and random byte flips)."""
    sample = corpus[::5]
    counts = _check(sample)
    assert counts["ok"] >= 1 and counts["refused"] >= 10, counts


@pytest.mark.slow
def test_whole_corpus_agrees(corpus: list[Path]) -> None:
    """All ≥ 300 files, each runtime load in its own subprocess."""
    counts = _check(corpus)
    assert counts["ok"] >= 10 and counts["refused"] >= 200, counts


def test_python_twin_names_the_native_reasons(corpus: list[Path]) -> None:
    """The twin's messages are the native loader's own words (cheap, in-process, whole corpus)."""
    reasons = {_python(p).split(": ", 1)[-1] for p in corpus}
    joined = "\n".join(reasons)
    for expected in (
        "rlkv: invalid metadata: rlkv.head_perm: layer 0 is not a permutation of 0..1",
        "rlkv: invalid metadata: rlkv.window_size: must be >= 1, got 0",
        "key rlkv.sparsity has wrong type i16 but expected type f32",
        "rlkv: invalid metadata: rlkv.version: unsupported version 1073741825 (expected 1)",
        "rlkv: invalid metadata: rlkv.version: missing",
        "damaged or truncated GGUF (duplicate key 'rlkv.version' for KV pair",
        "damaged or truncated GGUF (key 'rlkv.head_scores' has invalid GGUF type 9)",
    ):
        assert expected in joined, expected

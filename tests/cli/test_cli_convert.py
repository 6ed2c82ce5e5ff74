"""`rlkv-edge convert` on the command line: the happy path, a DuoAttention TSV mask, and bad input (one line on
stderr, exit code 2, no traceback, no output, input unchanged)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from gguf_fixtures import write_tiny_gguf
from reorder_checks import random_heads
from typer.testing import CliRunner

from rlkv_edge.cli import app as cli_app
from rlkv_edge.convert import default_output
from rlkv_edge.heads import save_heads
from rlkv_edge.metadata import read_rlkv_info


def _app() -> typer.Typer:
    """The real `rlkv-edge` app (its error path maps errors to one line and exit code 2)."""
    return cli_app


def _run(args: list[str]) -> object:
    """Invoke the CLI in-process."""
    return CliRunner().invoke(_app(), args)


def _sha(p: Path) -> str:
    """sha256 of a file."""
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _heads_json(path: Path, scores: object) -> Path:
    """A heads.json with arbitrary (possibly invalid) scores."""
    path.write_text(json.dumps({"format": "rlkv-heads", "version": 1, "scores": scores}))
    return path


def test_cli_convert_ok(tmp_path: Path) -> None:
    """Happy path through the CLI: summary on stdout, output beside the input, no temp files."""
    src = write_tiny_gguf(tmp_path / "m.gguf").path
    save_heads(random_heads(2, 2), tmp_path / "heads.json")
    result = _run(["convert", str(src), "--mask", str(tmp_path / "heads.json"), "--sparsity", "0.5"])
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "wrote" in result.output  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.json", "m.gguf", "m.rlkv.gguf"]


def test_tsv_heads_convert(tmp_path: Path) -> None:
    """A DuoAttention-style TSV with config.json converts, taking S and W from the config."""
    src = write_tiny_gguf(tmp_path / "m.gguf", n_layer=2, n_head=4, n_head_kv=2).path
    (tmp_path / "full_attention_heads.tsv").write_text("0.0\t1.0\n1.0\t0.0\n")
    (tmp_path / "config.json").write_text(json.dumps({"sink_size": 4, "recent_size": 12}))
    result = _run(["convert", str(src), "--mask", str(tmp_path / "full_attention_heads.tsv"), "-q"])
    assert result.exit_code == 0, result.output
    info = read_rlkv_info(default_output(src))
    assert (info["sink_size"], info["window_size"]) == (4, 12)
    assert info["head_perm"] == [[1, 0], [0, 1]]


def _truncated(tmp: Path) -> Path:
    """A GGUF cut in the middle of its tensor data."""
    src = write_tiny_gguf(tmp / "full.gguf").path
    data = src.read_bytes()
    out = tmp / "in.gguf"
    out.write_bytes(data[: len(data) * 2 // 3])
    src.unlink()
    return out


def _truncated_header(tmp: Path) -> Path:
    """A GGUF cut inside its metadata."""
    src = write_tiny_gguf(tmp / "full.gguf").path
    out = tmp / "in.gguf"
    out.write_bytes(src.read_bytes()[:100])
    src.unlink()
    return out


def _not_gguf(tmp: Path) -> Path:
    """A text file."""
    p = tmp / "in.gguf"
    p.write_text("hello, I am not a model\n")
    return p


def _read_only_dir(tmp: Path) -> str:
    """An output path in a directory that cannot be written."""
    d = tmp / "ro"
    d.mkdir()
    d.chmod(0o555)
    if os.access(d, os.W_OK):  # root ignores permissions: use a directory the kernel refuses
        return "/proc/rlkv-test.gguf"
    return str(d / "o.gguf")


BadCase = Callable[[Path], tuple[list[str], str]]


def _case_truncated(t: Path) -> tuple[list[str], str]:
    return [str(_truncated(t))], "truncated"


def _case_truncated_header(t: Path) -> tuple[list[str], str]:
    return [str(_truncated_header(t))], "truncated"


def _case_not_gguf(t: Path) -> tuple[list[str], str]:
    return [str(_not_gguf(t))], "not a GGUF"


def _case_missing(t: Path) -> tuple[list[str], str]:
    return [str(t / "in.gguf")], "no such file"


def _case_wrong_shape(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf", n_layer=2, n_head_kv=2)
    _heads_json(t / "heads.json", [[0.5, 0.5, 0.5]] * 3)
    return [str(t / "in.gguf")], "heads file is 3 x 3 (layers x KV heads) but in.gguf has 2 x 2"


def _case_nan(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    _heads_json(t / "heads.json", [[float("nan"), 0.5]] * 2)
    return [str(t / "in.gguf")], "finite"


def _case_sparsity_high(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    return [str(t / "in.gguf"), "--sparsity", "1.5"], "sparsity"


def _case_sparsity_low(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    return [str(t / "in.gguf"), "--sparsity", "-0.1"], "sparsity"


def _case_gpt2(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf", arch="gpt2")
    return [str(t / "in.gguf")], "unsupported architecture 'gpt2'"


def _case_gemma3(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf", arch="gemma3")
    return [str(t / "in.gguf")], "unsupported architecture 'gemma3'"


def _case_unwritable(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    return [str(t / "in.gguf"), "-o", _read_only_dir(t)], "cannot write"


def _case_missing_dir(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    return [str(t / "in.gguf"), "-o", str(t / "nowhere" / "o.gguf")], "does not exist"


def _case_same_path(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    return [str(t / "in.gguf"), "-o", str(t / "in.gguf")], "is the input file"


def _case_same_via_symlink(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    (t / "link.gguf").symlink_to(t / "in.gguf")
    return [str(t / "in.gguf"), "-o", str(t / "link.gguf")], "is the input file"


def _case_bad_mask(t: Path) -> tuple[list[str], str]:
    write_tiny_gguf(t / "in.gguf")
    (t / "heads.json").write_text("[1, 2")
    return [str(t / "in.gguf")], "not valid JSON"


BAD_CASES: dict[str, BadCase] = {
    "truncated": _case_truncated,
    "truncated-header": _case_truncated_header,
    "not-gguf": _case_not_gguf,
    "missing": _case_missing,
    "wrong-shape": _case_wrong_shape,
    "nan": _case_nan,
    "sparsity>1": _case_sparsity_high,
    "sparsity<0": _case_sparsity_low,
    "gpt2": _case_gpt2,
    "gemma3": _case_gemma3,
    "unwritable": _case_unwritable,
    "missing-dir": _case_missing_dir,
    "same-path": _case_same_path,
    "same-via-symlink": _case_same_via_symlink,
    "bad-mask": _case_bad_mask,
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_one_line_error(tmp_path: Path, case: str) -> None:
    """Each bad input: one-line error on stderr, exit != 0, no traceback, no output, input unchanged."""
    args, needle = BAD_CASES[case](tmp_path)
    if not (tmp_path / "heads.json").exists():
        save_heads(random_heads(2, 2), tmp_path / "heads.json")
    before = {p.name: _sha(p) for p in tmp_path.iterdir() if p.is_file()}
    result = CliRunner().invoke(_app(), ["convert", *args[:1], "--mask", str(tmp_path / "heads.json"), *args[1:]])
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.exit_code not in (0, None) and result.exit_code == 2, (result.output, result.exception)  # type: ignore[attr-defined]
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)  # type: ignore[attr-defined]
    assert stderr.startswith("rlkv-edge: error: ") and stderr.count("\n") == 1, stderr
    assert needle in stderr and "Traceback" not in stderr
    after = {p.name: _sha(p) for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # no output, no temp file, input unchanged
    (tmp_path / "ro").exists() and (tmp_path / "ro").chmod(0o755)


def test_bad_input_subprocess(tmp_path: Path) -> None:
    """Through a real process: exit code 2, one stderr line, nothing on stdout."""
    import subprocess
    import sys

    bad = _not_gguf(tmp_path)
    save_heads(random_heads(2, 2), tmp_path / "heads.json")
    code = "from rlkv_edge.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bad), "--mask", str(tmp_path / "heads.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("rlkv-edge: error: ") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("fmt", ["duoattention", "rlkv"])
def test_export_then_convert_gives_the_same_file_layout(tmp_path: Path, fmt: str) -> None:
    """`export HEADS --format F -o DIR` then `convert --mask DIR`: the same head order and F_l as from HEADS."""
    import numpy as np

    from rlkv_edge.cli import app
    from rlkv_edge.heads import HeadScores

    src = write_tiny_gguf(tmp_path / "m.gguf").path
    save_heads(HeadScores(np.array([[0.9, 0.2], [0.5, 0.5]]), sink_size=4, window_size=16), tmp_path / "h.json")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "h.json"), "--format", fmt, "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1] == str(tmp_path / "p" / "config.json")
    infos = []
    for mask, out in ((tmp_path / "h.json", tmp_path / "a.gguf"), (tmp_path / "p", tmp_path / "b.gguf")):
        r = CliRunner().invoke(app, ["convert", "-m", str(src), "--mask", str(mask), "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        infos.append(read_rlkv_info(out))
    for key in ("head_scores", "head_perm", "scores", "sink_size", "window_size", "sparsity"):
        assert infos[0].get(key) == infos[1].get(key), key
    r = CliRunner().invoke(app, ["export", str(tmp_path / "h.json"), "--format", "sglang", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "'sglang' is not one of 'duoattention', 'rlkv'" in r.stderr

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


CT = "'q3_k' is not one of 'f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'iq4_nl'"
NO_UNIT = "size '12' has no unit: write e.g. 12MiB, 12GiB or 12B"
# (command line, text the one stderr line must hold): every command that takes a shared option refuses the same
# bad value with the same words, naming the flag
BAD = [
    (["chat", "{rlkv}", "-s", "half"], "'--sparsity' / '-s'"),
    (["chat", "{rlkv}", "-s", "1.5"], "--sparsity must be in [0, 1], got 1.5"),
    (["chat", "{rlkv}", "-s", "nan"], "--sparsity must be in [0, 1], got nan"),
    (["chat", "{rlkv}", "--ctx", "-1"], "Invalid value for '--ctx-size' / '-c' / '--ctx'"),
    (["chat", "{rlkv}", "--ctx", "abc"], "Invalid value for '--ctx-size' / '-c' / '--ctx'"),
    (["chat", "{rlkv}", "--threads", "0"], "Invalid value for '--threads' / '-t'"),
    (["chat", "{rlkv}", "--cache-type-k", "q9_0"], "'--cache-type-k' / '-ctk'"),
    (["chat", "{rlkv}", "-ctv", "f8"], "'--cache-type-v' / '-ctv'"),
    (["chat", "{rlkv}", "-ctk", "q3_k"], CT),
    (["chat", "{rlkv}", "--kv-budget", "lots"], "cannot parse size 'lots'"),
    (["chat", "{rlkv}", "--kv-budget", "12"], NO_UNIT),
    (["chat", "{rlkv}", "--kv-budget", "1MiB", "-s", "0.5"], "give either --sparsity or --kv-budget, not both"),
    (["chat", "{rlkv}", "--sink", "-1"], "Invalid value for '--sink'"),
    (["chat", "{rlkv}", "--window", "0"], "Invalid value for '--window'"),
    (["chat", "{rlkv}", "--n-gpu-layers", "-2"], "Invalid value for '--n-gpu-layers' / '-ngl'"),
    (["chat", "{rlkv}", "-n", "-5"], "Invalid value for '--n-predict' / '-n'"),
    (["chat", "{rlkv}", "--top-p", "2"], "Invalid value for '--top-p'"),
    (["chat", "{rlkv}", "--min-p", "-0.1"], "Invalid value for '--min-p'"),
    (["chat", "{rlkv}", "--top-k", "-1"], "Invalid value for '--top-k'"),
    (["chat", "{rlkv}", "--temp", "-1"], "Invalid value for '--temp' / '--temperature'"),
    (["chat", "{rlkv}", "--repeat-penalty", "0", "-p", "x"], "--repeat-penalty must be > 0, got 0.0"),
    (["chat", "{rlkv}", "-fa", "maybe"], "Invalid value for '--flash-attn' / '-fa'"),
    (["chat", "{rlkv}", "-ub", "0"], "Invalid value for '--ubatch-size' / '-ub'"),
    (["chat", "{rlkv}", "-b", "0"], "Invalid value for '--batch-size' / '-b'"),
    (["chat", "{rlkv}", "--json-schema", "[1,", "-p", "x"], "--json-schema: not valid JSON"),
    (["chat", "{rlkv}", "--grammar", "x", "--json-schema", "true", "-p", "x"], "give one of --grammar, --json-schema"),
    (["chat", "{rlkv}", "-p", "x", "-f", "{heads}"], "give --prompt or --file, not both"),
    (["chat", "{rlkv}", "-p", "x", "--grammar", 'root ::= ( "a"'], "--grammar: llama.cpp's grammar parser refused it"),
    (["chat", "{rlkv}", "-p", "x", "--grammar", 'start ::= "a"'], "--grammar: a GBNF grammar needs a 'root ::= ...'"),
    (["chat", "{rlkv}", "-m", "{root}/other.gguf"], "two models given"),
    (["chat", "{rlkv}", "--no-such-option"], "No such option: --no-such-option"),
    (["chat", "{root}/missing.gguf", "-p", "x"], "model file not found"),
    (["serve", "{rlkv}", "--port", "0"], "Invalid value for '--port'"),
    (["serve", "{rlkv}", "--port", "http"], "Invalid value for '--port'"),
    (["serve", "{rlkv}", "-ctk", "q3_k"], CT),
    (["serve", "{rlkv}", "--kv-budget", "12"], NO_UNIT),
    (["serve", "{rlkv}", "-np", "0"], "Invalid value for '--parallel' / '-np'"),
    (["bench", "{rlkv}", "--depths", "a,b"], "--depths"),
    (["bench", "{rlkv}", "--reps", "0", "--depths", "0"], "Invalid value for '--reps' / '-r'"),
    (["bench", "{rlkv}", "-s", "2"], "--sparsity must be in [0, 1], got 2.0"),
    (["bench", "{rlkv}", "-ctk", "q3_k"], CT),
    (["bench", "{rlkv}", "--fill", "fast"], "'fast' is not one of 'compute', 'mark'"),
    (["bench", "{rlkv}", "-t", "0"], "Invalid value for '--threads' / '-t'"),
    (["bench"], "missing MODEL: give a GGUF file first or with -m/--model"),
    (["eval", "{rlkv}"], "--tasks"),
    (["eval", "{rlkv}", "--text", "{root}/missing.txt"], "missing.txt"),
    (["eval", "{rlkv}", "--tasks", "x.jsonl", "--max-tokens", "0"], "Invalid value for '--n-predict' / '-n'"),
    (["eval", "{rlkv}", "-ctk", "q3_k"], CT),
    (["eval", "-m", "{rlkv}", "-f", "{root}/missing.txt"], "missing.txt"),
    (["eval", "--tasks", "x.jsonl"], "missing MODEL: give a GGUF file first or with -m/--model"),
    (["frontier", "-m", "{root}/missing.gguf", "-f", "{heads}"], "model file not found"),
    (["eval", "{rlkv}", "-n", "-5"], "Invalid value for '--n-predict' / '-n'"),
    (["frontier", "{rlkv}", "-f", "{heads}", "-n", "-5"], "Invalid value for '--n-predict' / '-n'"),
    (["frontier", "{rlkv}", "-f", "{heads}", "--plot", "{root}/out.txt"], "--plot {root}/out.txt: write the plot to a"),
    (["frontier", "{rlkv}", "--cache-type", "q3_k"], "frontier needs --text FILE"),
    (["inspect", "{rlkv}", "-s", "-0.5"], "--sparsity must be in [0, 1], got -0.5"),
    (["inspect", "{rlkv}", "--cache-type-k", "q9_0"], "'--cache-type-k' / '-ctk'"),
    (["inspect", "{rlkv}", "-ctk", "q3_k"], CT),
    (["inspect", "{rlkv}", "--ubatch", "0"], "Invalid value for '--ubatch-size' / '-ub' / '--ubatch'"),
    (
        ["inspect", "{rlkv}", "--plot", "{root}/out.txt"],
        "--plot {root}/out.txt: write the plot to a .png, .pdf or .svg",
    ),
    (["inspect", "{root}/missing.gguf"], "missing.gguf"),
    (["inspect", "{heads}"], "heads.json"),
    (["convert", "{rlkv}"], "missing --mask HEADS"),
    (["convert", "{rlkv}", "--mask", "{root}/missing.json"], "missing.json"),
    (["convert", "{rlkv}", "-m", "{heads}"], "looks like a heads file: -m now means the model (as in llama.cpp)"),
    (["convert", "{heads}", "-m", "{rlkv}"], "looks like a heads file: -m now means the model (as in llama.cpp)"),
    (["convert", "{minicpm}", "--mask", "{heads}", "-o", "{root}/out.gguf"], "minicpm"),
    (["convert", "{rlkv}", "--mask", "{heads}", "-s", "x"], "'--sparsity' / '-s'"),
    (["train", "m", "--objective", "foo"], "'foo' is not one of 'grpo', 'distill', 'ablation'"),
    (["train", "m", "--dtype", "float8"], "'float8' is not one of 'auto', 'bfloat16', 'float16', 'float32'"),
    (["nonsense-command"], "No such command 'nonsense-command'"),
]


@pytest.mark.parametrize(("args", "says"), BAD, ids=[" ".join(a).replace("{", "").replace("}", "") for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(models: dict[str, Path], args: list[str], says: str) -> None:
    """One stderr line starting `rlkv-edge: error:` that says what is wrong (naming the flag), exit code 2."""
    argv = [a.format(**models) for a in args]
    r = CliRunner().invoke(app, argv)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (argv, r.output)
    assert len(lines) == 1 and lines[0].startswith("rlkv-edge: error: "), (argv, r.stderr)
    assert says.format(**models) in lines[0], (argv, lines[0])
    assert "Traceback" not in r.output and "╭" not in r.output


def test_environment_default_is_checked_like_the_flag(models: dict[str, Path]) -> None:
    """A bad RLKV_ARG_* value is refused as the flag would be, naming the variable."""
    r = CliRunner().invoke(app, ["inspect", str(models["rlkv"])], env={"RLKV_ARG_CACHE_TYPE_K": "q3_k"})
    assert r.exit_code == 2 and "RLKV_ARG_CACHE_TYPE_K" in r.stderr and CT in r.stderr


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

"""llama.cpp's flag names and meanings (issue 29): -m, -p, -f, -c, -n, sampling (--temp, --top-k, --top-p, --min-p,
--repeat-penalty, --grammar, --json-schema), --chat-template, -fa / -b / -ub / --no-mmap / --mlock, RLKV_ARG_*
environment defaults, `convert -m` as the model. Sampling runs on the bundled SmolLM2, in this process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import run_cli
from gguf_fixtures import smollm2_path, write_tiny_gguf
from typer.testing import CliRunner

from rlkv_edge.cli import app

QUESTION = "Name one fruit."


def chat(*args: str, env: dict[str, str] | None = None) -> str:
    """`rlkv-edge chat SmolLM2 -p QUESTION ARGS` in this process: the answer on stdout (exit 0 asserted)."""
    argv = ["chat", str(smollm2_path()), "-c", "512", "-t", "2", "-n", "24", *args]
    if "-p" not in args and "-f" not in args:
        argv += ["-p", QUESTION]
    r = CliRunner().invoke(app, argv, env=env)
    assert r.exit_code == 0, r.output
    return r.stdout


def sampled(*args: str, seeds: range = range(1, 5)) -> set[str]:
    """The answers at temperature 1.5 for several seeds."""
    return {chat("--temp", "1.5", "--seed", str(s), *args) for s in seeds}


@pytest.fixture(scope="module")
def greedy() -> str:
    return chat("--temp", "0")


@pytest.fixture(scope="module")
def unrestricted() -> set[str]:
    """With top-k, top-p and min-p off, different seeds give different answers (so a restriction is visible)."""
    out = sampled("--top-k", "0", "--top-p", "1", "--min-p", "0")
    assert len(out) > 1
    return out


def test_top_k_1_is_greedy(greedy: str, unrestricted: set[str]) -> None:
    """llama.cpp: --top-k N keeps the N most likely tokens; 1 leaves only the greedy one, whatever the seed."""
    assert sampled("--top-k", "1", "--top-p", "1", "--min-p", "0") == {greedy}


def test_top_p_near_0_is_greedy(greedy: str, unrestricted: set[str]) -> None:
    """llama.cpp: --top-p P keeps the smallest set of tokens whose probability reaches P (at least one)."""
    assert sampled("--top-k", "0", "--top-p", "0.0001", "--min-p", "0") == {greedy}


def test_min_p_1_is_greedy(greedy: str, unrestricted: set[str]) -> None:
    """llama.cpp: --min-p P drops tokens below P x the most likely one's probability; 1.0 keeps only it."""
    assert sampled("--top-k", "0", "--top-p", "1", "--min-p", "1") == {greedy}


def test_temp_0_ignores_the_seed(greedy: str) -> None:
    """llama.cpp: --temp 0 samples greedily (--temperature is the same flag)."""
    assert chat("--temperature", "0", "--seed", "5") == greedy


def test_repeat_penalty_reduces_repeats() -> None:
    """llama.cpp: --repeat-penalty > 1 lowers the logits of tokens already in the context (greedy SmolLM2 repeats
    "A gentle soul," in this poem; penalised, it does not)."""

    def distinct(text: str) -> float:
        words = text.lower().split()
        return len(set(words)) / len(words)

    prompt = ["-p", "Write a poem about rain.", "--temp", "0", "-n", "40"]
    plain, penalised = chat(*prompt), chat(*prompt, "--repeat-penalty", "1.5")
    assert plain.count("A gentle soul") >= 3 and "A gentle soul" not in penalised
    assert distinct(penalised) > distinct(plain) + 0.2


def test_grammar_constrains_the_answer(tmp_path: Path) -> None:
    """llama.cpp: --grammar / --grammar-file take a GBNF grammar the answer follows."""
    rule = 'root ::= "yes" | "no"'
    assert chat("-p", "Is the sky green?", "--grammar", rule).strip() in ("yes", "no")
    (tmp_path / "g.gbnf").write_text('root ::= [0-9]+ "."\n')
    answer = chat("-p", "How many legs has a spider?", "--grammar-file", str(tmp_path / "g.gbnf"), "-n", "8")
    assert answer.strip().rstrip(".").isdigit()


def test_json_schema_constrains_the_answer() -> None:
    """llama.cpp: -j/--json-schema makes the answer a JSON value of that schema."""
    schema = {"type": "object", "properties": {"fruit": {"type": "string"}}, "required": ["fruit"]}
    out = json.loads(chat("--json-schema", json.dumps(schema), "--temp", "0", "-n", "40"))
    assert isinstance(out["fruit"], str)


def test_prompt_from_file_and_model_option(tmp_path: Path, greedy: str) -> None:
    """-f reads the prompt from a file; -m names the model as the positional does."""
    (tmp_path / "q.txt").write_text(QUESTION)
    argv = ["chat", "-m", str(smollm2_path()), "-f", str(tmp_path / "q.txt"), "-c", "512", "-t", "2", "-n", "24"]
    r = CliRunner().invoke(app, [*argv, "--temp", "0"])
    assert r.exit_code == 0, r.output
    assert r.stdout == greedy


def test_environment_defaults(greedy: str) -> None:
    """RLKV_ARG_* give defaults as LLAMA_ARG_* do in llama.cpp; a flag on the command line wins."""
    env = {"RLKV_ARG_TEMP": "0", "RLKV_ARG_N_PREDICT": "24", "RLKV_ARG_MODEL": str(smollm2_path())}
    r = CliRunner().invoke(app, ["chat", "-p", QUESTION, "-c", "512", "-t", "2"], env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout == greedy
    r = CliRunner().invoke(app, ["chat", "-p", QUESTION, "-c", "512", "-t", "2", "-n", "2"], env=env)
    assert len(r.stdout) < len(greedy)


def test_load_flags_reach_the_runtime() -> None:
    """-fa / -b / -ub / --no-mmap / --mlock become llama-cpp-python's load arguments (llama.cpp's meanings)."""
    from rlkv_edge.cli.options import RuntimeOptions

    kw = RuntimeOptions(flash_attn="off", n_batch=64, n_ubatch=32, mmap=False, mlock=True, threads=3).llama_kwargs()
    assert kw == {"flash_attn": False, "n_batch": 64, "n_ubatch": 32, "use_mmap": False, "use_mlock": True,
                  "n_threads": 3}  # fmt: skip
    assert RuntimeOptions().llama_kwargs() == {"flash_attn": None}  # auto: our loader turns it on
    answer = chat("--temp", "0", "-fa", "on", "-b", "64", "-ub", "32", "--no-mmap")
    assert answer.strip()


def test_chat_template_name_and_jinja(greedy: str) -> None:
    """--chat-template takes a chat format name or a Jinja template instead of the model's own: the model's own
    template given as Jinja gives the same answer; another format changes it; anything else is refused."""
    from rlkv_edge.metadata import read_header

    own = str(read_header(smollm2_path())["tokenizer.chat_template"])
    assert chat("--temp", "0", "--chat-template", own) == greedy
    assert chat("--temp", "0", "--chat-template", "alpaca") != greedy
    r = CliRunner().invoke(app, ["chat", str(smollm2_path()), "-p", "x", "--chat-template", "nosuch"])
    assert r.exit_code == 2
    assert r.stderr.startswith("rlkv-edge: error: --chat-template 'nosuch': neither a chat format name (alpaca, ")


def test_ctx_size_0_is_the_trained_context() -> None:
    """llama.cpp: -c 0 loads the model's own context length."""
    from rlkv_edge.cli.options import RuntimeOptions
    from rlkv_edge.models import read_model

    model = read_model(smollm2_path())
    assert RuntimeOptions(ctx=0).for_model(model).ctx == model.info["context_length"] == 8192


def test_verbose_stats_on_stderr_answer_alone_on_stdout(greedy: str) -> None:
    """chat -p prints the answer alone on stdout; --stats / --verbose add KV memory and speeds on stderr."""
    r = run_cli("chat", str(smollm2_path()), "-p", QUESTION, "-c", "512", "-t", "2", "-n", "24", "--temp", "0",
                "--verbose")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == greedy
    assert "KV cache" in r.stderr and "full" in r.stderr and "local" in r.stderr
    assert "prompt" in r.stderr and "t/s" in r.stderr and "generation" in r.stderr


def test_piped_repl_prints_answers_only() -> None:
    """Piped into the REPL: no `>>> ` prompt and no banner on stdout, one answer per line."""
    import subprocess

    from app_fixtures import ENV, RLKV_EDGE

    argv = [RLKV_EDGE, "chat", str(smollm2_path()), "-c", "512", "-t", "2", "-n", "8", "--temp", "0"]
    r = subprocess.run(argv, input="Hi\n", capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert ">>>" not in r.stdout and "Type a message" not in r.stdout and "rlkv" not in r.stdout
    assert r.stdout.strip()


def test_convert_m_is_the_model(tmp_path: Path) -> None:
    """convert -m MODEL --mask HEADS, as llama.cpp's -m; the old `-m HEADS` is refused with the right spelling."""
    from rlkv_edge.heads import HeadScores, save_heads

    src = write_tiny_gguf(tmp_path / "m.gguf").path
    save_heads(HeadScores(np.array([[0.9, 0.2], [0.5, 0.1]])), tmp_path / "heads.json")
    r = run_cli("convert", "-m", str(src), "--mask", str(tmp_path / "heads.json"), "-o", str(tmp_path / "o.gguf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.gguf").is_file()
    r = run_cli("convert", str(src), "-m", str(tmp_path / "heads.json"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"rlkv-edge: error: -m/--model {tmp_path / 'heads.json'} looks like a heads file: -m now means the model "
        f"(as in llama.cpp); give the heads file with --mask, e.g. convert model.gguf --mask {tmp_path / 'heads.json'}"
    ]


def test_help_lists_choices_and_no_bool() -> None:
    """--help: no `<bool>` beside flags; fixed choices listed; -h works as llama.cpp's."""
    env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    for cmd, choices in (
        ("chat", ["<f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|iq4_nl>", "<on|off|auto>"]),
        ("bench", ["<compute|mark>", "<f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|iq4_nl>"]),
        ("train", ["<grpo|distill|ablation>", "<auto|bfloat16|float16|float32>"]),
        ("inspect", ["<f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|iq4_nl>"]),
        ("eval", []),
        ("serve", ["<on|off|auto>"]),
        ("frontier", []),
    ):
        r = run_cli(cmd, "-h", env=env)
        assert r.returncode == 0, r.stderr
        assert "<bool>" not in r.stdout, cmd
        for c in choices:
            assert c in r.stdout, (cmd, c)


def test_shared_choices_match_the_code() -> None:
    """The choices declared once in options.py are the ones the code accepts."""
    from typing import get_args

    from rlkv_edge.bench import FILLS
    from rlkv_edge.cli import options
    from rlkv_edge.runtime import KV_TYPES
    from rlkv_edge.train.config import OBJECTIVES

    assert set(get_args(options.CacheType)) == set(KV_TYPES)
    assert get_args(options.Fill) == FILLS
    assert get_args(options.Objective) == OBJECTIVES


@pytest.mark.parametrize("cmd", ["bench", "eval"])
def test_bench_and_eval_pass_load_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cmd: str) -> None:
    """bench (llama-bench's -fa/-b/-ub) and eval (llama-perplexity's) load every configuration with them."""
    import importlib

    from app_fixtures import tiny_rlkv

    model = tiny_rlkv(tmp_path / "tiny.rlkv.gguf").path
    module = importlib.import_module("rlkv_edge.bench" if cmd == "bench" else "rlkv_edge.evaluate")
    seen: list[dict[str, object]] = []
    real = module.open_model

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "open_model", spy)
    (tmp_path / "t.txt").write_text("the cat sat on the mat and the dog sat on the log. " * 20)
    extra = ["--depths", "0", "-p", "8", "-n", "4"] if cmd == "bench" else ["-f", str(tmp_path / "t.txt"), "-c", "64"]
    r = CliRunner().invoke(app, [cmd, "-m", str(model), *extra, "-fa", "off", "-b", "32", "-ub", "16", "--no-mmap"])
    assert r.exit_code == 0, r.output
    loads = [kw for kw in seen if "logits_all" in kw or cmd == "bench"]  # not eval's tokenizer probe
    assert len(loads) == 2 and all(
        (kw["flash_attn"], kw["n_batch"], kw["n_ubatch"], kw["use_mmap"]) == (False, 32, 16, False) for kw in loads
    ), seen

"""`rlkv-edge serve`: the official openai client, streaming and not, against a server in a subprocess."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import ENV, RLKV_EDGE, free_port, server_process, tiny_rlkv

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = tiny_rlkv(tmp_path_factory.mktemp("serve") / "tiny-rlkv.gguf").path
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["serve", str(model), "--port", str(port), "--ctx", "512", "--threads", "2", "--alias", "tiny"]
    with server_process(args, port, log, timeout=60) as url:
        yield url
    assert "rlkv: sparsity 0.5" in log.read_text()


def test_chat_completion(server: str) -> None:
    client = openai.OpenAI(base_url=server, api_key="none", timeout=60, max_retries=0)
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "the cat"}], max_tokens=8, temperature=0
    )
    assert r.choices[0].message.role == "assistant"
    assert r.usage is not None and r.usage.completion_tokens > 0  # re-tokenized text: may exceed max_tokens
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_stream(server: str) -> None:
    client = openai.OpenAI(base_url=server, api_key="none", timeout=60, max_retries=0)
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "the dog"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 2
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # deterministic: the same request without streaming gives the same text
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "the dog"}], max_tokens=8, temperature=0
    )
    assert r.choices[0].message.content == text


def test_serve_binds_localhost_by_default() -> None:
    import inspect

    from rlkv_edge.cli.serve import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


def test_serve_missing_model(tmp_path: Path) -> None:
    r = subprocess.run(
        [RLKV_EDGE, "serve", str(tmp_path / "x.gguf")], capture_output=True, text=True, env=ENV, timeout=60
    )
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [
        f"rlkv-edge: error: model file not found: {tmp_path / 'x.gguf'}"
    ]


def test_parallel_passes_llama_cpp_flags_to_llama_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve --parallel hands llama.cpp's own flags to llama-server: -fa, -b, -ub, --chat-template, and
    --no-mmap / --mlock as this llama.cpp's --load-mode; RLKV_ARG_* defaults apply as LLAMA_ARG_* do."""
    import importlib

    from app_fixtures import tiny_rlkv
    from typer.testing import CliRunner

    from rlkv_edge import _native
    from rlkv_edge.cli import app

    serve_cli = importlib.import_module("rlkv_edge.cli.serve")  # the module (rlkv_edge.cli.serve is the command)

    if _native.tool_path("llama-server") is None:
        pytest.skip("llama-server is not built")
    model = tiny_rlkv(tmp_path / "tiny.rlkv.gguf").path
    seen: list[list[str]] = []

    def fake_execv(path: str, args: list[str]) -> None:
        seen.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(serve_cli.os, "execv", fake_execv)
    argv = ["serve", "-m", str(model), "-np", "2", "-c", "256", "-fa", "off", "-b", "64", "-ub", "32"]
    r = CliRunner().invoke(
        app, [*argv, "--no-mmap", "--mlock", "--chat-template", "chatml"], env={"RLKV_ARG_PORT": "8123"}
    )
    assert r.exit_code == 0, r.output
    args = " ".join(seen[0][1:])
    want = ["-m " + str(model), "--port 8123", "-c 256", "-np 2", "-fa off", "-b 64", "-ub 32", "--load-mode mlock"]
    for part in [*want, "--chat-template chatml"]:
        assert part in args, (part, args)

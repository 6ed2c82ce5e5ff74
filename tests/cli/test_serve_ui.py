"""`rlkv-edge serve --ui`: llama-server serves the bundled chat page; a headless Chromium loads it, sends a prompt
and reads the answer on a compressed SmolLM2 (s = 0.5)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "What is 2 + 2?"  # SmolLM2-135M answers it in one sentence, greedy
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    """A Chromium-family browser on PATH (Debian: the chromium package), or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def headless(exe: str, url: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the browser headless on url; virtual time stops while the page's requests are pending, so the page's
    answer is in the DOM when it dumps it."""
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=120000"]
    return subprocess.run([*cmd, *extra, url], capture_output=True, text=True, timeout=timeout, check=False)


def test_ui_runs_llama_server_with_the_bundled_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve --ui hands over to llama-server (one slot unless --parallel) with --path on the packaged page."""
    import importlib

    from app_fixtures import tiny_rlkv
    from typer.testing import CliRunner

    from rlkv_edge import _native
    from rlkv_edge.cli import app

    serve_cli = importlib.import_module("rlkv_edge.cli.serve")
    if _native.tool_path("llama-server") is None:
        pytest.skip("llama-server is not built")
    model = tiny_rlkv(tmp_path / "tiny.rlkv.gguf").path
    seen: list[list[str]] = []

    def fake_execv(path: str, args: list[str]) -> None:
        seen.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(serve_cli.os, "execv", fake_execv)
    r = CliRunner().invoke(app, ["serve", "-m", str(model), "--ui", "-c", "256", "--port", "8124"])
    assert r.exit_code == 0, r.output
    args = seen[0]
    page = Path(args[args.index("--path") + 1])
    assert (page / "index.html").is_file() and "v1/chat/completions" in (page / "index.html").read_text()
    assert "--no-webui" not in args and args[args.index("-np") + 1] == "1"
    assert "chat page: http://127.0.0.1:8124/" in r.output
    r = CliRunner().invoke(app, ["serve", "-m", str(model), "-np", "2", "-c", "256"])
    assert r.exit_code == 0, r.output
    assert "--no-webui" in seen[1] and "--path" not in seen[1]  # without --ui: no page


@pytest.mark.slow
def test_chat_page_in_headless_chromium(tmp_path: Path) -> None:
    """Load the page, send a prompt, read the answer: the API's own greedy answer, on SmolLM2 at s = 0.5 (about
    50 s on 2 busy cores: the browser starts twice, for the DOM and for a screenshot)."""
    from app_fixtures import free_port, server_process, smollm2_rlkv

    from rlkv_edge import _native

    exe = browser()
    if exe is None:
        pytest.skip(f"no headless browser installed ({', '.join(BROWSERS)}; Debian: apt-get install chromium)")
    if _native.tool_path("llama-server") is None:
        pytest.skip("llama-server is not built")
    model = smollm2_rlkv(tmp_path / "smollm2.rlkv.gguf")
    port = free_port()
    args = ["serve", str(model), "--ui", "-s", "0.5", "-c", "2048", "--port", str(port), "-t", "2"]
    with server_process(args, port, tmp_path / "server.log", health="/health") as base:
        log = (tmp_path / "server.log").read_text()
        assert "--override-kv rlkv.sparsity=float:0.5" in log, log[-2000:]
        body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "seed": 0, "max_tokens": 256}
        req = urllib.request.Request(
            f"{base}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            want = json.load(resp)["choices"][0]["message"]["content"]
        url = f"http://127.0.0.1:{port}/?prompt={urllib.parse.quote(PROMPT)}"
        page = headless(exe, url, "--dump-dom")
        assert page.returncode == 0, page.stderr[-2000:]
        assert 'data-state="answered"' in page.stdout, page.stdout[-3000:]
        msgs = re.findall(r'<div class="msg (user|assistant)">(.*?)</div>', page.stdout, re.S)
        assert [(k, html.unescape(t)) for k, t in msgs] == [("user", PROMPT), ("assistant", want)]
        assert "4" in want
        shot = tmp_path / "chat_ui.png"
        headless(exe, url, f"--screenshot={shot}", "--window-size=900,560", "--hide-scrollbars")
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        out = ROOT / "build" / "chat_ui.png"  # the README's docs/chat_ui.png is a copy of one such screenshot
        out.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, out)

"""The build is ours: llama_cpp loads rlkv-edge's patched library, and models load and generate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest
from gguf_fixtures import TinyModel

import rlkv_edge
from rlkv_edge import _native


def _greedy(path: Path, prompt: str, n: int = 12, n_ctx: int = 256) -> str:
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=2, verbose=False, seed=0)
    out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
    text: str = out["choices"][0]["text"]
    llm.close()
    return text


def test_llama_cpp_loads_our_library() -> None:
    lib_path = Path(llama_cpp.llama_cpp._lib._name).resolve()
    assert lib_path.parent == _native.LIB_DIR
    version = _native.rlkv_version()
    assert version.startswith(f"rlkv-edge {rlkv_edge.__version__} ")
    assert version.endswith("llama.cpp 0c1e57098")


def test_importing_llama_cpp_first_is_refused(tmp_path: Path) -> None:
    # A second copy of the library stands for "another llama.cpp" that llama_cpp loads on its own.
    foreign = tmp_path / "foreign-lib"
    shutil.copytree(_native.LIB_DIR, foreign)
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(foreign)}
    code = "import llama_cpp\nimport rlkv_edge\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert "import rlkv_edge first" in proc.stderr


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_q8", "tiny_qwen2", "tiny_qwen2_q8"])
def test_tiny_models_generate_deterministically(fixture: str, request: pytest.FixtureRequest) -> None:
    model: TinyModel = request.getfixturevalue(fixture)
    first = _greedy(model.path, "the cat sat on")
    second = _greedy(model.path, "the cat sat on")
    assert first == second
    assert len(first) > 0


def test_smollm2_generates(smollm2: Path) -> None:
    text = _greedy(smollm2, "The capital of France is", n=8)
    assert text == _greedy(smollm2, "The capital of France is", n=8)
    assert "Paris" in text


def test_doctor_names_our_library(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "rlkv-edge"
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.run([script, "doctor"], capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    assert str(_native.library_file()) in proc.stdout
    assert "0c1e57098" in proc.stdout
    assert "CPU" in proc.stdout


def test_core_cli_imports_without_torch(tmp_path: Path) -> None:
    """Laptop installs have no torch: the CLI (and every non-train command's --help) must still work."""
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'trl', 'triton', 'accelerate', 'datasets'): sys.modules[m] = None\n"
        "from typer.testing import CliRunner\n"
        "from rlkv_edge.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['doctor'], ['convert', '--help'], ['inspect', '--help']):\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code == 0, (args, res.output, res.exception)\n"
        "print('OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]

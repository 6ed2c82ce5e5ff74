"""A portable build (RLKV_PORTABLE: ggml-cpu per CPU generation, loaded at run time) picks and reports its variant.

These run on the build RLKV_LIB_DIR selects; `make test-portable` points it at build/portable. On the venv's
native build they check only that nothing is loaded the portable way.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gguf_fixtures import write_tiny_gguf

from rlkv_edge import _native

portable = pytest.mark.skipif(
    not _native.cpu_variants(), reason="not a portable build (make test-portable builds and selects one)"
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def test_native_build_loads_no_variant() -> None:
    if _native.cpu_variants():
        pytest.skip("a portable build is selected")
    assert _native.cpu_variant() is None
    assert _native.build_info().get("portable", False) is False


@portable
def test_portable_build_loads_a_cpu_backend() -> None:
    assert _native.build_info()["portable"] is True
    assert _native.cpu_variant() is not None
    assert "CPU" in _native.backend_names()
    assert any(d.type == "CPU" for d in _native.devices())


@portable
def test_forced_variant_runs_a_model(tmp_path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    code = (
        "import rlkv_edge, llama_cpp\n"
        "from rlkv_edge import _native\n"
        f"llm = llama_cpp.Llama({str(path)!r}, n_ctx=64, n_threads=1, verbose=False)\n"
        "out = llm.create_completion('a b', max_tokens=4, temperature=0.0)\n"
        "print(_native.cpu_variant(), out['usage']['completion_tokens'])\n"
    )
    proc = _python(code, RLKV_CPU_VARIANT="x64")  # no SIMD at all
    assert proc.returncode == 0, proc.stderr[-2000:]
    variant, n_tokens = proc.stdout.split()
    assert variant == "x64" and int(n_tokens) >= 0


@portable
def test_unknown_variant_is_one_clear_error() -> None:
    code = "from rlkv_edge import _native\n_native.llama_lib()\n"
    proc = _python(code, RLKV_CPU_VARIANT="pentium2")
    assert proc.returncode != 0
    assert "RLKV_CPU_VARIANT=pentium2: no such CPU variant" in proc.stderr
    assert "haswell" in proc.stderr  # the variants there are named

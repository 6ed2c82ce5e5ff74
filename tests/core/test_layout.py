"""The layout rules of docs/DESIGN.md §1, checked on the source tree: dependencies point down, and the
source tree is the package that gets imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rlkv_edge"
STAGES = ("rlkv_edge.convert", "rlkv_edge.train")


def _module_name(path: Path) -> str:
    """rlkv_edge.x.y for rlkv_edge/x/y.py (the stage folders seen through their symlinks)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved, at any depth (lazy imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _sources(folder: str) -> list[Path]:
    """The Python files of rlkv_edge/<folder> (convert and train through their symlinks)."""
    return sorted((PACKAGE / folder if folder in ("convert", "train") else ROOT / folder).rglob("*.py"))


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_core_imports_no_stage_and_no_cli() -> None:
    """rlkv_edge/* (outside cli/) imports neither rlkv_edge.convert, rlkv_edge.train nor rlkv_edge.cli."""
    bad = []
    for path in _sources("rlkv_edge"):
        rel = path.relative_to(PACKAGE).parts
        if rel[0] in ("convert", "train", "cli"):
            continue
        bad += [
            f"{path.relative_to(ROOT)} imports {m}" for m in _imports(path) if _within(m, (*STAGES, "rlkv_edge.cli"))
        ]
    assert not bad, bad


@pytest.mark.parametrize(("stage", "other"), [("convert", "rlkv_edge.train"), ("train", "rlkv_edge.convert")])
def test_stages_import_only_the_core(stage: str, other: str) -> None:
    """convert/ and train/ import the core, never each other or the CLI."""
    bad = []
    for path in _sources(stage):
        bad += [f"{stage}/{path.name} imports {m}" for m in _imports(path) if _within(m, (other, "rlkv_edge.cli"))]
    assert not bad, bad


def test_the_check_has_teeth(tmp_path: Path) -> None:
    """The import parser sees lazy and relative imports."""
    probe = PACKAGE / "cli" / "__init__.py"
    assert "rlkv_edge.convert" in {m for m in _imports(PACKAGE / "cli" / "convert.py") if m.startswith("rlkv_edge.")}
    assert "rlkv_edge.cli.app" in _imports(probe)
    assert "rlkv_edge.convert.converter.convert_gguf" in _imports(PACKAGE / "convert" / "__init__.py")


def test_source_tree_is_what_gets_imported(tmp_path: Path) -> None:
    """From the repository root and from elsewhere, rlkv_edge and its stages come from this source tree."""
    code = (
        "import rlkv_edge, rlkv_edge.train, rlkv_edge.convert, llama_cpp\n"
        "print(rlkv_edge.__file__); print(rlkv_edge.convert.__file__); print(rlkv_edge.train.__file__)\n"
    )
    for cwd in (ROOT, tmp_path):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        files = [Path(line).resolve() for line in proc.stdout.split()]
        assert files == [PACKAGE / "__init__.py", ROOT / "convert" / "__init__.py", ROOT / "train" / "__init__.py"]

"""rlkv_edge/atomic.py: outputs written through a temp file."""

from __future__ import annotations

from pathlib import Path


def test_atomic_outputs_get_a_new_files_mode(tmp_path: Path) -> None:
    """Files written atomically are readable like any new file (umask applied), not mkstemp's 0o600."""
    import os
    import stat

    from rlkv_edge.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644

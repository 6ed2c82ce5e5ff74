"""Where a bench result came from: the commit and machine added to its JSON record, written atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from rlkv_edge.atomic import atomic_write_text


def save_record(out: Path, record: dict[str, Any]) -> None:
    """Write record as JSON to out (temp file + rename) with the short commit and the machine added."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {**record, "commit": commit, "machine": f"{platform.machine()} {os.cpu_count()} cpus"}
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)

"""`rlkv-edge doctor`: which llama.cpp library is in use, how it was built, what this machine offers (torch is
imported only with --train; piped output is plain `name: value` lines)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import rlkv_edge
from rlkv_edge import _native
from rlkv_edge.cli.llama import TOOLS
from rlkv_edge.errors import NativeLibraryError


class _Rows:
    """(name, value) rows: a rich table on a terminal, plain `name: value` lines otherwise."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str]] = []

    def add_row(self, name: str, value: str) -> None:
        """One row."""
        self.rows.append((name, value))

    def show(self) -> None:
        """Print the rows to stdout."""
        if not sys.stdout.isatty():
            for name, value in self.rows:
                typer.echo(f"{name}: {value}")
            return
        table = Table(show_header=False, box=None)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for name, value in self.rows:
            table.add_row(name, value, style="red" if value.startswith("error:") else None)
        Console(highlight=False).print(table)


def doctor(
    train: Annotated[
        bool, typer.Option("--train", help="Also import torch and report its version and the GPU it sees (slow).")
    ] = False,
) -> None:
    """Show which llama.cpp library is in use, how it was built, and what this machine offers."""
    table = _Rows()
    table.add_row("rlkv-edge", rlkv_edge.__version__)
    try:
        lib_file = _native.library_file()
        version = _native.rlkv_version()
        table.add_row("library", str(lib_file))
        table.add_row("native build", version)
        table.add_row("llama.cpp commit", _native.build_info().get("llama_cpp_commit", "unknown"))
        table.add_row("backends", ", ".join(_native.backend_names()) or "none")
        if _native.cpu_variants():
            table.add_row(
                "portable build",
                f"CPU variant {_native.cpu_variant()} (of {', '.join(_native.cpu_variants())}; "
                f"${_native.CPU_VARIANT_ENV} picks one)",
            )
        for dev in _native.devices():
            memory = f", {dev.free / 2**30:.1f}/{dev.total / 2**30:.1f} GiB free" if dev.total else ""
            table.add_row(f"device {dev.name}", f"{dev.description} ({dev.type}{memory})")
        from rlkv_edge.runtime import grouped_decode

        table.add_row(
            "decode attention",
            "grouped: each K/V row read once per GQA group (CPU cache, f16 K/V)"
            if grouped_decode()
            else "ggml flash attention (no AVX2/FMA/F16C, or RLKV_DECODE_ATTN=0)",
        )
        if not _native.gpu_devices():
            table.add_row("offload", "no GPU device: -ngl has nothing to offload to (CPU only)")
        for name in TOOLS.values():
            path = _native.tool_path(name)
            table.add_row(name, str(path) if path else "not built (make install-tools)")
        table.add_row("system", _native.system_info())
    except NativeLibraryError as e:
        table.add_row("library", f"error: {e}")
    train_ok = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "trl"))
    missing = "not installed (pip install 'rlkv-edge[train]')"
    table.add_row(
        "train extra",
        ("installed" if train_ok else missing) + ("" if train else " (doctor --train: torch and its GPU)"),
    )
    if train and train_ok:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch"
        table.add_row("torch", f"{torch.__version__}, GPU: {gpu}")
    table.show()

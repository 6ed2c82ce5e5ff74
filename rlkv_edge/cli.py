"""The `rlkv-edge` command line (Typer + Rich). Each command lives with the module that does its work."""

from __future__ import annotations

import importlib.util

import typer
from rich.console import Console
from rich.table import Table

import rlkv_edge

app = typer.Typer(
    name="rlkv-edge",
    help="RL-guided per-head KV cache compression for reasoning LLMs, on a patched llama.cpp.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"rlkv-edge {rlkv_edge.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """RL-guided per-head KV cache compression for reasoning LLMs, on a patched llama.cpp."""


@app.command()
def doctor() -> None:
    """Show which llama.cpp library is in use, how it was built, and what this machine offers."""
    from rlkv_edge import _native

    table = Table(show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("rlkv-edge", rlkv_edge.__version__)
    try:
        lib_file = _native.library_file()
        version = _native.rlkv_version()
        table.add_row("library", str(lib_file))
        table.add_row("native build", version)
        table.add_row("llama.cpp commit", _native.build_info().get("llama_cpp_commit", "unknown"))
        table.add_row("backends", ", ".join(_native.backend_names()) or "none")
        table.add_row("system", _native.system_info())
    except _native.NativeLibraryError as e:
        table.add_row("library", f"[red]{e}[/red]")
    train_ok = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "trl"))
    missing = "not installed (pip install 'rlkv-edge[train]')"
    table.add_row("train extra", "installed" if train_ok else missing)
    if train_ok:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch"
        table.add_row("torch", f"{torch.__version__}, GPU: {gpu}")
    console.print(table)


from rlkv_edge.convert.cli import convert, inspect_cmd  # noqa: E402

app.command("convert")(convert)
app.command("inspect")(inspect_cmd)

from rlkv_edge.train.cli import train  # noqa: E402  (imports torch only when the command runs)

app.command("train")(train)

from rlkv_edge.bench import bench_cmd  # noqa: E402
from rlkv_edge.chat import chat  # noqa: E402
from rlkv_edge.evaluate import eval_cmd  # noqa: E402
from rlkv_edge.serve import serve  # noqa: E402

app.command("chat")(chat)
app.command("bench")(bench_cmd)
app.command("eval")(eval_cmd)
app.command("serve")(serve)


def main() -> None:
    """Entry point of the `rlkv-edge` script."""
    app()


if __name__ == "__main__":
    main()

"""The `rlkv-edge` command line: one module per command, wired into one Typer app (`app.py`).

This package is the only part of `rlkv_edge` that imports the `convert` and `train` stages.
"""

from __future__ import annotations

from rlkv_edge.cli.app import app
from rlkv_edge.cli.bench import bench
from rlkv_edge.cli.chat import chat
from rlkv_edge.cli.convert import convert, export, inspect
from rlkv_edge.cli.doctor import doctor
from rlkv_edge.cli.eval import eval_cmd
from rlkv_edge.cli.frontier import frontier
from rlkv_edge.cli.llama import llama
from rlkv_edge.cli.models import models_app
from rlkv_edge.cli.serve import serve
from rlkv_edge.cli.train import train

app.command("doctor")(doctor)
app.command("convert")(convert)
app.command("inspect")(inspect)
app.command("export")(export)
app.command("train")(train)
app.command("chat")(chat)
app.command("bench")(bench)
app.command("eval")(eval_cmd)
app.command("serve")(serve)
app.command("frontier")(frontier)
app.add_typer(models_app, name="models")
# every argument after TOOL, --help included, is the program's
app.command(
    "llama", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)(llama)


def main() -> None:
    """Entry point of the `rlkv-edge` script."""
    app()


__all__ = ["app", "main"]

"""The Typer app and the one place where errors become messages and exit codes.

Any `RlkvError` raised by a command, and any bad option value or missing argument that click finds,
is printed as one line `rlkv-edge: error: ...` on stderr; the exit code is the error's `exit_code`
(2 for bad input, 130 when interrupted).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

import rlkv_edge
from rlkv_edge.errors import RlkvError

PROG = "rlkv-edge"


def error_line(message: str) -> str:
    """`rlkv-edge: error: <message>` on one line."""
    return f"{PROG}: error: {' '.join(str(message).split())}"


def note(message: str) -> None:
    """A progress note on stderr (`rlkv-edge: ...`), so stdout keeps only the command's output."""
    typer.echo(f"{PROG}: {message}", err=True)


def warn(message: str) -> None:
    """A one-line warning on stderr (`rlkv-edge: warning: ...`): the command runs, but the user should know."""
    typer.echo(f"{PROG}: warning: {' '.join(str(message).split())}", err=True)


def progress(message: str) -> None:
    """A line of progress on stderr, as it is."""
    typer.echo(message, err=True)


def _usage_message(e: typer.TyperException) -> str:
    """click's message for a bad command line, with where to read more."""
    ctx = getattr(e, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = e.format_message().replace("Value error, ", "")
    param = getattr(e, "param", None)
    if ctx is not None and param is not None and param.name:  # name the variable only if the value came from it
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "ENVIRONMENT":
            message = re.sub(r" \(env var: '[A-Z0-9_]+'\)", "", message, count=1)
    return f"{message}{where}"


_display_type_rich = TyperOption.display_type_rich


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """No `<bool>` beside a flag in --help (it takes no value; Typer 0.29 prints one)."""
    return None if self.is_flag else _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


class RlkvGroup(TyperGroup):
    """Typer's command group, with rlkv-edge's single error path around every command."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; map errors to one line and an exit code."""
        if not (sys.argv[1:] if args is None else args):  # `rlkv-edge` alone: the help, as Typer shows it
            return super().main(args, prog_name, complete_var, standalone_mode=standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except RlkvError as e:
            typer.echo(error_line(str(e)), err=True)
            code = e.exit_code
        except typer.TyperException as e:  # click's: bad option values, missing arguments, unknown commands
            typer.echo(error_line(_usage_message(e)), err=True)
            code = 2
        except typer.Abort:  # end of input at a prompt
            typer.echo(error_line("interrupted"), err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    name=PROG,
    cls=RlkvGroup,
    help="RL-guided per-head KV cache compression for reasoning LLMs, on a patched llama.cpp.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},  # llama.cpp's -h too
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    """--version: print the version and exit."""
    if value:
        typer.echo(f"{PROG} {rlkv_edge.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
    ),
) -> None:
    """RL-guided per-head KV cache compression for reasoning LLMs, on a patched llama.cpp."""

"""`rlkv-edge llama TOOL [ARGS]...`: llama.cpp's own programs, built against rlkv-edge's libllama.

    rlkv-edge llama server -m model.rlkv.gguf --parallel 4 --override-kv rlkv.sparsity=float:0.5
    rlkv-edge llama perplexity -m model.rlkv.gguf -f text.txt --kl-divergence-base base.kld --kl-divergence
    rlkv-edge llama bench -m model.rlkv.gguf -p 512 -n 128 -d 0,2048

Everything after TOOL goes to the program unchanged (its own `--help` lists its flags).
"""

from __future__ import annotations

import os

import typer

from rlkv_edge import _native
from rlkv_edge.errors import UsageError

TOOLS = {"server": "llama-server", "cli": "llama-cli", "bench": "llama-bench", "perplexity": "llama-perplexity"}


def llama(
    ctx: typer.Context,
    tool: str = typer.Argument(..., help=f"One of: {', '.join(TOOLS)}.", show_default=False),
) -> None:
    """Run llama.cpp's llama-server, llama-cli, llama-bench or llama-perplexity on the per-head KV cache."""
    if tool in ("--help", "-h", "help"):
        typer.echo(ctx.get_help())
        raise typer.Exit()
    if tool not in TOOLS:
        raise UsageError(f"unknown llama.cpp tool {tool!r}; choose one of: {', '.join(TOOLS)}")
    path = _native.tool_path(TOOLS[tool])
    if path is None:
        raise UsageError(
            f"{TOOLS[tool]} is not built in {_native.BIN_DIR}; build the tools with `make install-tools` "
            "(CMAKE_ARGS=-DRLKV_BUILD_TOOLS=ON)"
        )
    os.execv(path, [str(path), *ctx.args])

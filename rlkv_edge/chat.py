"""`rlkv-edge chat`: an interactive REPL (or a one-shot `--prompt`) on the per-head KV runtime.

Streams tokens through llama-cpp-python's `create_chat_completion` with the model's own chat template.
Ctrl-C stops the answer being written, not the program; `<think>` sections are shown dimmed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from rlkv_edge.memory import BudgetError, choose_sparsity, format_mib, parse_size
from rlkv_edge.models import ModelError, describe, open_model, resolve

HELP = """\
Commands:
  /help    this help
  /stats   tokens in context, KV cache bytes (full and local cache), speed of the last answer
  /reset   forget the conversation (keeps the system prompt)
  /exit    quit (also /quit or Ctrl-D)
Input: end a line with \\ to continue on the next one, or wrap several lines in \"\"\" ... \"\"\".
Ctrl-C stops the answer being written."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class CliError(RuntimeError):
    """An error shown to the user as one line `rlkv-edge: error: ...` with exit status 2."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    line = " ".join(str(message).split())
    typer.echo(f"rlkv-edge: error: {line}", err=True)
    return typer.Exit(code)


# Options shared with `serve` (and, in part, bench and eval).
ModelArg = Annotated[
    Path | None,
    typer.Argument(help="GGUF model (default: the bundled SmolLM2-135M-Instruct).", show_default=False),
]
CtxOpt = Annotated[int, typer.Option("--ctx", "-c", help="Context length n_ctx in tokens.")]
SparsityOpt = Annotated[
    float | None,
    typer.Option("--sparsity", "-s", help="Share of heads that keep only sinks + window (default: the file's)."),
]
BudgetOpt = Annotated[
    str | None,
    typer.Option("--kv-budget", help="Pick the smallest sparsity whose KV cache fits this size, e.g. 64MiB."),
]
GpuOpt = Annotated[int, typer.Option("--n-gpu-layers", "-ngl", help="Layers to offload to the GPU (-1: all).")]
CacheKOpt = Annotated[str | None, typer.Option("--cache-type-k", help="K cache type: f16, q8_0, q4_0, ...")]
CacheVOpt = Annotated[str | None, typer.Option("--cache-type-v", help="V cache type: f16, q8_0, q4_0, ...")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", "-t", help="CPU threads (default: up to 8).")]


def pick_sparsity(
    path: Path,
    sparsity: float | None,
    kv_budget: str | None,
    ctx: int,
    type_k: str | None,
    type_v: str | None,
) -> tuple[float | None, str | None]:
    """The sparsity to load with (None: the file's own) and a line explaining a --kv-budget choice."""
    if sparsity is not None and not 0.0 <= sparsity <= 1.0:
        raise CliError(f"--sparsity must be in [0, 1], got {sparsity}")
    if kv_budget is None:
        return sparsity, None
    if sparsity is not None:
        raise CliError("give either --sparsity or --kv-budget, not both")
    try:
        choice = choose_sparsity(path, parse_size(kv_budget), ctx, type_k=type_k or "f16", type_v=type_v or "f16")
    except BudgetError as e:
        raise CliError(str(e)) from None
    return choice.sparsity, choice.describe()


def load_for_cli(
    model: Path | None,
    *,
    ctx: int,
    sparsity: float | None,
    kv_budget: str | None,
    n_gpu_layers: int,
    cache_type_k: str | None,
    cache_type_v: str | None,
    threads: int | None = None,
    seed: int | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> Any:
    """Resolve MODEL, apply --kv-budget, load; progress notes go to stderr. CliError on any failure."""
    if ctx <= 0:
        raise CliError(f"--ctx must be positive, got {ctx}")
    try:
        resolved = resolve(model)
        if resolved.note and not quiet:
            typer.echo(f"rlkv-edge: {resolved.note}", err=True)
        s, budget_line = pick_sparsity(resolved.path, sparsity, kv_budget, ctx, cache_type_k, cache_type_v)
        if budget_line and not quiet:
            typer.echo(f"rlkv-edge: {budget_line}", err=True)
        if threads is not None:
            kwargs["n_threads"] = threads
        if seed is not None:
            kwargs["seed"] = seed
        return open_model(
            resolved.path,
            n_ctx=ctx,
            sparsity=s,
            n_gpu_layers=n_gpu_layers,
            type_k=cache_type_k,
            type_v=cache_type_v,
            **kwargs,
        )
    except ModelError as e:
        raise CliError(str(e)) from None


class ThinkSplitter:
    """Splits streamed text into (text, dim) pieces: `<think> ... </think>` sections are dim."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""

    def feed(self, text: str) -> list[tuple[str, bool]]:
        """Pieces ready to print; a possible partial tag at the end is held back."""
        self.pending += text
        out: list[tuple[str, bool]] = []
        while True:
            tag = THINK_CLOSE if self.inside else THINK_OPEN
            i = self.pending.find(tag)
            if i >= 0:
                out.append((self.pending[:i], self.inside))
                out.append((tag, True))
                self.pending = self.pending[i + len(tag) :]
                self.inside = not self.inside
                continue
            keep = next((k for k in range(len(tag) - 1, 0, -1) if self.pending.endswith(tag[:k])), 0)
            cut = len(self.pending) - keep
            out.append((self.pending[:cut], self.inside))
            self.pending = self.pending[cut:]
            return [(t, d) for t, d in out if t]

    def flush(self) -> list[tuple[str, bool]]:
        """Whatever is still held back."""
        rest, self.pending = self.pending, ""
        return [(rest, self.inside)] if rest else []


@dataclass
class TurnStats:
    """Speed of one answer."""

    prompt_seconds: float = 0.0
    gen_tokens: int = 0
    gen_seconds: float = 0.0
    stopped: bool = False

    @property
    def tokens_per_second(self) -> float:
        """Generation speed after the first token."""
        return (self.gen_tokens - 1) / self.gen_seconds if self.gen_tokens > 1 and self.gen_seconds > 0 else 0.0


@dataclass
class ChatSession:
    """A conversation with a loaded model."""

    llm: Any
    console: Console
    system: str | None = None
    temperature: float = 0.7
    seed: int | None = None
    max_tokens: int | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    last: TurnStats | None = None

    def __post_init__(self) -> None:
        """Start with the system prompt."""
        self.reset()

    def reset(self) -> None:
        """Forget the conversation, keep the system prompt."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def _print(self, pieces: list[tuple[str, bool]]) -> None:
        for text, dim in pieces:
            self.console.print(text, end="", style="dim" if dim else None, markup=False, highlight=False)
        self.console.file.flush()

    def ask(self, text: str) -> str:
        """Stream the answer to `text`; Ctrl-C stops it (the partial answer stays in the conversation)."""
        self.messages.append({"role": "user", "content": text})
        splitter = ThinkSplitter()
        stats = TurnStats()
        answer: list[str] = []
        t0 = time.perf_counter()
        t_first: float | None = None
        n_first = 0
        try:
            stream = self.llm.create_chat_completion(
                messages=self.messages,
                stream=True,
                temperature=self.temperature,
                seed=self.seed,
                max_tokens=self.max_tokens,
            )
            for chunk in stream:
                delta = chunk["choices"][0].get("delta", {}).get("content")
                if not delta:
                    continue
                if t_first is None:
                    t_first = time.perf_counter()
                    n_first = self.llm.n_tokens  # the prompt is evaluated; the first token is sampled
                answer.append(delta)
                self._print(splitter.feed(delta))
        except KeyboardInterrupt:
            stats.stopped = True
        except ValueError as e:  # e.g. the conversation no longer fits the context
            self.messages.pop()
            raise CliError(f"{e} (use /reset to start over)") from None
        finally:
            self._print(splitter.flush())
            now = time.perf_counter()
            stats.prompt_seconds = (t_first or now) - t0
            stats.gen_seconds = now - t_first if t_first is not None else 0.0
            # Generated tokens (chunks can hold several tokens, e.g. the bytes of one character).
            stats.gen_tokens = self.llm.n_tokens - n_first + 1 if t_first is not None else 0
            self.last = stats
        reply = "".join(answer)
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    def stats_text(self) -> str:
        """The /stats report."""
        from rlkv_edge import runtime

        lines = [f"tokens in context: {self.llm.n_tokens} / {self.llm.n_ctx()}"]
        try:
            full, local = runtime.kv_bytes(self.llm)
            lines.append(
                f"KV cache: {format_mib(full + local)} (full cache {format_mib(full)}, local cache {format_mib(local)})"
            )
            inf = runtime.info(self.llm)
            if inf.enabled:
                lines.append(
                    f"rlkv: sparsity {inf.sparsity:.4g}, {inf.n_full_total}/{inf.n_layer * inf.n_head_kv} "
                    f"heads full, sinks {inf.sink_size} + window {inf.window_size}"
                )
            else:
                lines.append("rlkv: off (no rlkv metadata in this model)")
        except Exception as e:  # an older native build
            lines.append(f"KV cache: unavailable ({e})")
        if self.last is not None:
            lines.append(
                f"last answer: {self.last.gen_tokens} tokens, {self.last.tokens_per_second:.1f} tokens/s, "
                f"first token after {self.last.prompt_seconds:.2f} s" + (" (stopped)" if self.last.stopped else "")
            )
        return "\n".join(lines)


def read_input(prompt: str = ">>> ", more: str = "... ") -> str | None:
    """One message: a trailing `\\` continues the line; \"\"\" ... \"\"\" spans lines. None on EOF."""
    try:
        line = input(prompt)
    except EOFError:
        return None
    if line.lstrip().startswith('"""'):
        body = line.lstrip()[3:]
        if body.rstrip().endswith('"""'):
            return body.rstrip()[:-3]
        parts = [body] if body else []
        while True:
            try:
                line = input(more)
            except EOFError:
                break
            if line.rstrip().endswith('"""'):
                parts.append(line.rstrip()[:-3])
                break
            parts.append(line)
        return "\n".join(parts).strip("\n")
    parts = []
    while line.endswith("\\"):
        parts.append(line[:-1])
        try:
            line = input(more)
        except EOFError:
            line = ""
            break
    parts.append(line)
    return "\n".join(parts)


def repl(session: ChatSession) -> None:
    """The interactive loop."""
    console = session.console
    # A process started in the background by a non-interactive shell inherits SIGINT as ignored, and
    # Python then never raises KeyboardInterrupt: make Ctrl-C stop answers wherever we were started from.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    console.print("Type a message, /help for commands, /exit to quit.", style="dim", highlight=False)
    while True:
        try:
            text = read_input()
        except KeyboardInterrupt:
            console.print("\n(Ctrl-C stops an answer; /exit or Ctrl-D quits)", style="dim", highlight=False)
            continue
        if text is None:
            console.print()
            return
        cmd = text.strip()
        if not cmd:
            continue
        if cmd.startswith("/") and "\n" not in cmd:
            name = cmd.split()[0].lower()
            if name in ("/exit", "/quit", "/bye"):
                return
            if name == "/help":
                console.print(HELP, highlight=False, markup=False)
            elif name == "/reset":
                session.reset()
                console.print("conversation cleared", style="dim", highlight=False)
            elif name == "/stats":
                console.print(session.stats_text(), highlight=False, markup=False)
            else:
                console.print(f"unknown command {name}; /help lists them", style="red", highlight=False)
            continue
        try:
            session.ask(text)
        except CliError as e:
            console.print(f"\nrlkv-edge: error: {e}", style="red", highlight=False, markup=False)
            continue
        if session.last is not None and session.last.stopped:
            console.print(" [stopped]", style="dim", highlight=False, markup=False)
        else:
            console.print()


def chat(
    model: ModelArg = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Answer this one message, print it and exit.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    ctx: CtxOpt = 4096,
    sparsity: SparsityOpt = None,
    kv_budget: BudgetOpt = None,
    n_gpu_layers: GpuOpt = 0,
    cache_type_k: CacheKOpt = None,
    cache_type_v: CacheVOpt = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (0: greedy).")] = 0.7,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (makes --prompt reproducible).")] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", "-n", help="Longest answer in tokens (default: until the context is full)."),
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Chat with a model on the per-head KV runtime (a REPL, or one answer with --prompt)."""
    one_shot = prompt is not None
    try:
        llm = load_for_cli(
            model,
            ctx=ctx,
            sparsity=sparsity,
            kv_budget=kv_budget,
            n_gpu_layers=n_gpu_layers,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            threads=threads,
            seed=seed,
        )
    except CliError as e:
        raise fail(str(e)) from None
    console = Console(highlight=False, soft_wrap=True)
    if not one_shot:
        console.print(f"{Path(llm.model_path).name}: {describe(llm)}", style="dim", markup=False)
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    session = ChatSession(llm, console, system=system, temperature=temperature, seed=seed, max_tokens=max_tokens)
    try:
        if one_shot:
            try:
                session.ask(prompt or "")
            except CliError as e:
                raise fail(str(e)) from None
            console.print()
            if session.last is not None and session.last.stopped:
                raise typer.Exit(130)
        else:
            repl(session)
    finally:
        llm.close()
    sys.stdout.flush()

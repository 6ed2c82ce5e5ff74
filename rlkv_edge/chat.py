"""The chat REPL behind `rlkv-edge chat` (the command itself is in rlkv_edge/cli/chat.py).

Streams tokens through llama-cpp-python's `create_chat_completion` with the model's own chat template.
Ctrl-C stops the answer being written, not the program; `<think>` sections are shown dimmed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from rlkv_edge.errors import RlkvError
from rlkv_edge.memory import format_mib

HELP = """\
Commands:
  /help    this help
  /stats   tokens in context, KV cache bytes (full and local cache), speed of the last answer
  /reset   forget the conversation (keeps the system prompt)
  /exit    quit (also /quit or Ctrl-D)
Input: end a line with \\ to continue on the next one, or wrap several lines in \"\"\" ... \"\"\".
Ctrl-C stops the answer being written."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


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
    prompt_tokens: int = 0
    gen_tokens: int = 0
    gen_seconds: float = 0.0
    stopped: bool = False

    @property
    def tokens_per_second(self) -> float:
        """Generation speed after the first token."""
        return (self.gen_tokens - 1) / self.gen_seconds if self.gen_tokens > 1 and self.gen_seconds > 0 else 0.0

    @property
    def prompt_per_second(self) -> float:
        """Prompt tokens in context per second until the first token (llama.cpp's prompt eval speed)."""
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0


@dataclass
class ChatSession:
    """A conversation with a loaded model."""

    llm: Any
    console: Console
    system: str | None = None
    temperature: float = 0.7
    seed: int | None = None
    max_tokens: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # top_k, top_p, min_p, repeat_penalty, grammar
    on_answer: Callable[[ChatSession], None] | None = None  # the REPL calls it after each answer (--stats)
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
                **self.sampling,
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
            raise RlkvError(f"{e} (use /reset to start over)") from None
        finally:
            self._print(splitter.flush())
            now = time.perf_counter()
            stats.prompt_seconds = (t_first or now) - t0
            stats.gen_seconds = now - t_first if t_first is not None else 0.0
            stats.prompt_tokens = n_first
            # Generated tokens (chunks can hold several tokens, e.g. the bytes of one character).
            stats.gen_tokens = self.llm.n_tokens - n_first + 1 if t_first is not None else 0
            self.last = stats
        reply = "".join(answer)
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    def answer_stats(self) -> str:
        """One line for --stats: KV memory (full vs local cache), prompt and generation speed of the last answer."""
        from rlkv_edge import runtime

        try:
            full, local = runtime.kv_bytes(self.llm)
            kv = f"KV cache {format_mib(full + local)} (full {format_mib(full)} + local {format_mib(local)})"
        except Exception as e:  # an older native build
            kv = f"KV cache unavailable ({e})"
        last = self.last or TurnStats()
        return (
            f"{kv}; prompt {last.prompt_tokens} tokens in {last.prompt_seconds:.2f} s "
            f"({last.prompt_per_second:.1f} t/s); generation {last.gen_tokens} tokens "
            f"({last.tokens_per_second:.1f} t/s)"
        )

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


def repl(session: ChatSession, interactive: bool = True) -> None:
    """The interactive loop; prompts and hints only when `interactive` (stdin is a terminal), so piped input gives
    the answers alone on stdout."""
    console = session.console
    # A process started in the background by a non-interactive shell inherits SIGINT as ignored, and
    # Python then never raises KeyboardInterrupt: make Ctrl-C stop answers wherever we were started from.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if interactive:
        console.print("Type a message, /help for commands, /exit to quit.", style="dim", highlight=False)
    while True:
        try:
            text = read_input() if interactive else read_input("", "")
        except KeyboardInterrupt:
            console.print("\n(Ctrl-C stops an answer; /exit or Ctrl-D quits)", style="dim", highlight=False)
            continue
        if text is None:
            if interactive:
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
        except RlkvError as e:
            console.print(f"\nrlkv-edge: error: {e}", style="red", highlight=False, markup=False)
            continue
        if session.last is not None and session.last.stopped:
            console.print(" [stopped]", style="dim", highlight=False, markup=False)
        else:
            console.print()
        if session.on_answer is not None:
            session.on_answer(session)

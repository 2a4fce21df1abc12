"""The model commands in a terminal: a reply streamed as it is generated, and the interactive chat
of ``llmds chat`` (line editing and history, Ctrl-C that stops a reply, not the chat)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, TextIO

__all__ = ["CHAT_HISTORY", "chat", "stream_reply", "terminal_input"]

CHAT_HISTORY = "~/.llmds_chat_history"  # input lines, for the arrow keys (a terminal only)


def stream_reply(engine, prompt: Any, params, out: TextIO, interruptible: bool = False) -> tuple[str, bool]:
    """Stream one reply to ``out``; ``(text, interrupted)``.  With ``interruptible``, Ctrl-C ends
    this reply (the request is aborted between engine steps) instead of the program."""
    import signal

    stop = []
    previous = signal.signal(signal.SIGINT, lambda *_: stop.append(1)) if interruptible else None
    text = []
    outputs = engine.stream(prompt, params)
    try:
        for o in outputs:
            if o.text:
                out.write(o.text)
                out.flush()
                text.append(o.text)
            if stop:
                break
    finally:
        outputs.close()  # aborts the request if it is still running
        if interruptible:
            signal.signal(signal.SIGINT, previous)
    out.write("\n")
    out.flush()
    return "".join(text), bool(stop)


def chat(engine, params, system: str | None = None, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """The interactive chat; returns the exit status.  On a terminal: line editing and history
    (readline, kept in ``CHAT_HISTORY``), Ctrl-C ends the reply being written (or clears the line),
    Ctrl-D or ``/exit`` quits, ``/reset`` clears the conversation and says so.  Replies go to
    ``out`` (stdout), everything else to stderr."""
    stdin, out = stdin or sys.stdin, out or sys.stdout
    head = [{"role": "system", "content": system}] if system else []
    history: list[dict[str, str]] = []
    tty = stdin.isatty()
    read_line: Callable[[], str] = terminal_input() if tty else stdin.readline
    if tty:
        sys.stderr.write("llmds chat: /reset clears the conversation, /exit (or Ctrl-D) quits; "
                         "Ctrl-C stops a reply\n")
    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as in a shell
            sys.stderr.write("\n")
            continue
        if not line or line.strip() in ("/exit", "/quit"):
            if tty:
                sys.stderr.write("\n")
            return 0
        line = line.rstrip("\n")
        if line.strip() == "/reset":
            history.clear()
            sys.stderr.write("llmds chat: conversation cleared\n")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply, interrupted = stream_reply(engine, head + history, params, out, interruptible=tty)
        history.append({"role": "assistant", "content": reply})  # what was shown, even if cut short
        if interrupted:
            sys.stderr.write("llmds chat: reply stopped\n")


def terminal_input() -> Callable[[], str]:
    """A line reader with readline's line editing and a history file (plain ``input`` where
    readline does not exist); ``""`` at end of input."""
    try:
        import atexit
        import readline
    except ImportError:
        readline = None
    if readline is not None:
        path = os.path.expanduser(CHAT_HISTORY)
        try:
            readline.read_history_file(path)
        except OSError:
            pass
        readline.set_history_length(1000)

        def save() -> None:
            try:
                readline.write_history_file(path)
            except OSError:
                pass

        atexit.register(save)

    def read() -> str:
        try:
            return input("you> ") + "\n"
        except EOFError:
            return ""

    return read

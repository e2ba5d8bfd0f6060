"""The CLI's consoles. Piped output is not cut to 80 columns, so scripts and tests see
whole rows (set ``COLUMNS`` to choose a width)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape

_PIPE_WIDTH = 200


def _make(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


console = _make(stderr=False)
err_console = _make(stderr=True)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr; the message is printed as is (no markup)."""
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)

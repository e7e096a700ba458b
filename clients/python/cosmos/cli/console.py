"""The terminal the CLI writes to."""

from __future__ import annotations

from rich.console import Console


def make_console() -> Console:
    """A console for people; piped output gets 120 columns instead of rich's 80 so tables stay whole."""
    console = Console()
    return console if console.is_terminal else Console(width=120)

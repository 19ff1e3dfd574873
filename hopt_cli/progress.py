"""A progress line on stderr, shared by `hopt run`, `hopt replay` and `hopt_cli.run()`."""
from __future__ import annotations

import shutil
import sys

import click


class ProgressLine:
    """Progress on stderr: on a terminal one line redrawn in place and fitted to its width, elsewhere
    a line per update that says something new; a message always starts on a line of its own."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.open = False
        self.last: str | None = None

    def show(self, done: int, total: int, note: str) -> None:
        if not self.tty:
            text = progress_text(done, total, note, None)
            if text != self.last:
                click.echo(text, err=True)
            self.last = text
            return
        line = progress_text(done, total, note, shutil.get_terminal_size().columns - 1)
        click.echo(f"\r{line}\x1b[K", err=True, nl=done == total)
        self.open = done != total

    def say(self, message: str) -> None:
        click.echo(("\n" if self.open else "") + message, err=True)
        self.open = False


def progress_text(done: int, total: int, note: str, columns: int | None) -> str:
    """`[####....] done/total intervals  note`, at most `columns` characters when given."""
    counts = f"{done}/{total} intervals"
    width = 30 if columns is None else max(10, min(30, columns - len(counts) - len(note) - 5))
    filled = width * done // max(total, 1)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {counts}  {note}".rstrip()
    return line if columns is None else line[:columns]

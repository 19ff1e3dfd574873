"""A progress line on stderr, which `hopt run`, `hopt replay` and `hopt_cli.run()` draw: the library only
calls `show` and `say` on the `Progress` its caller gives it."""
from __future__ import annotations

import shutil
import sys
from typing import Protocol


class Progress(Protocol):
    """Where a run reports: the intervals done so far, and a message now and then."""

    def show(self, done: int, total: int, note: str) -> None: ...

    def say(self, message: str) -> None: ...


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
                _write(text + "\n")
            self.last = text
            return
        line = progress_text(done, total, note, shutil.get_terminal_size().columns - 1)
        _write(f"\r{line}\x1b[K" + ("\n" if done == total else ""))
        self.open = done != total

    def say(self, message: str) -> None:
        _write(("\n" if self.open else "") + message + "\n")
        self.open = False


def _write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def progress_text(done: int, total: int, note: str, columns: int | None) -> str:
    """`[####....] done/total intervals  note`, at most `columns` characters when given."""
    counts = f"{done}/{total} intervals"
    width = 30 if columns is None else max(10, min(30, columns - len(counts) - len(note) - 5))
    filled = width * done // max(total, 1)
    line = f"[{'#' * filled}{'.' * (width - filled)}] {counts}  {note}".rstrip()
    return line if columns is None else line[:columns]

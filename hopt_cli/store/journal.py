"""The append-only journal: one JSON event per line, the experiment's source of truth.

A crash mid-append leaves a last line without its newline: readers stop before it, and the next
writer (holding the lock) cuts it off before appending, so no later line can ever follow a torn one.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hopt_cli.errors import CorruptFile
from hopt_cli.store.fsio import append_line

CHUNK = 1 << 22  # bytes read at a time: replaying a journal of any length needs only this much at once


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Complete events after byte `offset`, and the offset just past the last complete line."""
        events: list[dict[str, Any]] = []
        return events, self.replay(offset, events.append)

    def replay(self, offset: int, apply: Callable[[dict[str, Any]], None]) -> int:
        """Call `apply` on each complete event after byte `offset`, in order, reading in chunks.

        Returns the offset just past the last complete line; a torn last line is left unread.
        """
        position = offset
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            rest = b""
            while chunk := handle.read(CHUNK):
                data = rest + chunk
                end = data.rfind(b"\n") + 1
                for line in data[:end].splitlines(keepends=True):
                    apply(self._parse(line, position))
                    position += len(line)
                rest = data[end:]
                if len(chunk) < CHUNK:  # the end: what follows the last newline may be cut under the lock
                    break
        return position

    def _parse(self, line: bytes, position: int) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "type" not in event:
            raise CorruptFile(self.path, f"the line at byte {position} is not a journal event",
                              "restore the file from a backup, or cut the journal before that line "
                              "(`truncate -s " f"{position} {self.path}`) and delete state.json")
        return event

    def repair_tail(self) -> int:
        """Cut a torn last line left by a crash mid-append (call under the lock); returns bytes cut."""
        size = self.path.stat().st_size
        if size == 0:
            return 0
        with open(self.path, "rb+") as handle:
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return 0
            handle.seek(max(0, size - 65536))
            tail = handle.read()
            cut = tail.rfind(b"\n")
            keep = size - len(tail) + cut + 1 if cut >= 0 else self._last_newline(handle, size - len(tail))
            handle.truncate(keep)
            os.fsync(handle.fileno())
            return size - keep

    @staticmethod
    def _last_newline(handle: Any, before: int) -> int:
        """Offset just past the last newline before byte `before` (0 if none); for very long torn lines."""
        while before > 0:
            start = max(0, before - 65536)
            handle.seek(start)
            chunk = handle.read(before - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return start + cut + 1
            before = start
        return 0

    def append(self, event: dict[str, Any]) -> int:
        """Append one event (call under the lock, after repair_tail); returns the new size."""
        return append_line(self.path, (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode())

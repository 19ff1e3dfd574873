"""The append-only journal: one JSON event per line, the experiment's source of truth.

A crash mid-append leaves a last line without its newline: readers stop before it, and the next
writer (holding the lock) cuts it off before appending, so no later line can ever follow a torn one.

Every event carries its sequence number (`seq`, its line number from 1) and the hash of the line
before it (`prev`), as its writer saw the journal. A writer whose view was stale (a network client's
cached size, or a lock that did not exclude) writes numbers that do not follow the lines before its
own: that event is void, for every reader alike, since the rule looks at the journal's bytes only.
The writer reads its line back and learns it. Lines before the first numbered one were written by a
hopt that did not number them; they count as valid.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli.errors import CorruptFile, command
from hopt_cli.store.fsio import append_line, retrying

CHUNK = 1 << 22  # bytes read at a time: replaying a journal of any length needs only this much at once
TAIL_BYTES = 1 << 16  # read from the journal's end to find when its last event was written
GARBAGE_SHOWN = 40  # characters of a line that is no event an error quotes


@dataclass(frozen=True)
class Cursor:
    """How far a reader got: the byte offset, the lines read (valid or void), the hash of the last one,
    and whether numbered lines have begun."""

    offset: int = 0
    lines: int = 0
    last: str = ""
    numbered: bool = False

    def after(self, line: bytes, event: dict[str, Any]) -> tuple[Cursor, bool]:
        """The cursor past `line` (holding `event`), and whether the event is valid."""
        if "seq" in event:
            valid = event["seq"] == self.lines + 1 and event.get("prev") == self.last
        else:
            valid = not self.numbered
        return Cursor(self.offset + len(line), self.lines + 1, line_hash(line), self.numbered or "seq" in event), valid

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def line_hash(line: bytes) -> str:
    return hashlib.blake2b(line, digest_size=8).hexdigest()


Visit = Callable[[dict[str, Any], bytes, bool], None]  # (event, its line, valid)


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.unterminated = 0  # bytes after the last complete line at the end of the last replay

    def read(self, cursor: Cursor = Cursor()) -> tuple[list[dict[str, Any]], Cursor]:
        """The valid complete events after `cursor`, and the cursor past the last complete line."""
        events: list[dict[str, Any]] = []
        return events, self.replay(cursor, lambda event, line, valid: events.append(event) if valid else None)

    def replay(self, cursor: Cursor, visit: Visit) -> Cursor:
        """Call `visit(event, line, valid)` on each complete line after `cursor`, in order, in chunks.

        Returns the cursor past the last complete line; a torn last line is left unread.
        """
        offset = cursor.offset
        rest = b""
        while chunk := retrying(lambda: self._read_at(offset, CHUNK), self.path):
            offset += len(chunk)
            data = rest + chunk
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines(keepends=True):
                event = self._parse(line, cursor)
                cursor, valid = cursor.after(line, event)
                visit(event, line, valid)
            rest = data[end:]
            if len(chunk) < CHUNK:  # the end: what follows the last newline may be cut under the lock
                break
        self.unterminated = len(rest)
        return cursor

    def _read_at(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes from `offset`, through a fresh open (which a network client revalidates)."""
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def head(self) -> str | None:
        """The hash of the first line: it tells one experiment from another (None: no line yet)."""
        with open(self.path, "rb") as handle:
            first = handle.readline()
        return line_hash(first) if first.endswith(b"\n") else None

    def last_time(self) -> float | None:
        """When the last complete event was written, read from the file's end alone (None: no event)."""
        with open(self.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
        for line in reversed(tail.split(b"\n")[:-1]):  # what follows the last newline is torn, or nothing
            try:
                return float(json.loads(line)["time"])
            except (ValueError, KeyError, TypeError):
                continue
        return None

    def check_lines(self) -> None:
        """Raise CorruptFile naming the first complete line that is no journal event, if there is one."""
        self.replay(Cursor(), lambda event, line, valid: None)

    def _parse(self, line: bytes, cursor: Cursor) -> dict[str, Any]:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "type" not in event:
            garbage = line.rstrip(b"\n")[:GARBAGE_SHOWN].decode(errors="replace")
            raise CorruptFile(self.path, f"line {cursor.lines + 1} (at byte {cursor.offset}) is not a journal event "
                                         f"(garbage: {garbage!r})",
                              "restore the file from a backup, or cut the journal before that line "
                              f"(`{command('truncate', '-s', cursor.offset, self.path)}`) and delete state.json")
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

    def append(self, event: dict[str, Any], cursor: Cursor) -> bytes:
        """Append one event numbered as following `cursor` (call under the lock, after repair_tail);
        returns the line written, which only reading it back can show valid."""
        line = number(event, cursor)
        append_line(self.path, line)
        return line

    def append_lines(self, lines: list[bytes]) -> None:
        """Append lines numbered in sequence (`number`) with one write: a reader finds them all valid or
        all void, since each one's number follows the one before it only where the first's does."""
        append_line(self.path, b"".join(lines))


def number(event: dict[str, Any], cursor: Cursor) -> bytes:
    """The journal line of `event`, numbered as following `cursor`."""
    numbered = {**event, "seq": cursor.lines + 1, "prev": cursor.last}
    return (json.dumps(numbered, separators=(",", ":"), allow_nan=False) + "\n").encode()

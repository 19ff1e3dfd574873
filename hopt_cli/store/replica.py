"""The replica: this process's copy of the population, caught up from state.json and the journal's tail.

It owns every read of the journal (sync, typed events, the read-back of our own appends) and the
snapshot, which any process may write: the journal stays the source of truth.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hopt_cli import events
from hopt_cli.errors import CorruptFile, FilesystemError
from hopt_cli.events import JournalEvent
from hopt_cli.population import Population
from hopt_cli.store import snapshot
from hopt_cli.store.fsio import RETRIES, patience, read_bytes, retrying, write_json_atomic
from hopt_cli.store.journal import Cursor, Journal
from hopt_cli.store.paths import ExperimentPaths
from hopt_cli.store.snapshot import events_in

CATCH_UP_BYTES = 1 << 16  # a journal tail longer than this is read before taking the lock

log = logging.getLogger("hopt")


class Replica:
    """The population as the journal has it, read incrementally by one process."""

    def __init__(self, paths: ExperimentPaths, journal: Journal, empty: Callable[[], Population]) -> None:
        self.paths = paths
        self.journal = journal
        self.empty = empty  # a fresh population of the recipe's shape
        self.population = empty()
        self.cursor = Cursor()
        self._loaded = False
        self._mine: bytes | None = None  # the line we appended last, until we read it back
        self._landed: bool | None = None  # whether it read back valid
        self._snapshot_seen: tuple[tuple[int, int, int] | None, int] = (None, 0)  # state.json's stat, its events

    def sync(self) -> Population:
        """Catch the population up with the journal (snapshot first, then the tail)."""
        if not self._loaded:
            self._load_snapshot()
            self._loaded = True
        self.cursor = self.journal.replay(self.cursor, self._visit)
        return self.population

    def read_back(self, line: bytes) -> bool:
        """Sync until `line`, which we just appended, is read; whether it is valid (it follows the line
        before it). A network client may answer with a cached size for a while: we look for about a second."""
        self._mine, self._landed = line, None
        try:
            for _ in patience():
                self.sync()
                if self._landed is not None:
                    return self._landed
            raise FilesystemError(self.paths.journal, "the event just appended cannot be read back", RETRIES)
        finally:
            self._mine = self._landed = None

    def speculate(self, line: bytes) -> None:
        """Apply our own `line`, numbered as following the cursor but not written yet, as if read: the
        population runs ahead of the journal until `confirm` says the line is there, or `reset`."""
        event = json.loads(line)
        self.cursor, valid = self.cursor.after(line, event)
        if not valid:
            raise ValueError("a speculated line must follow the cursor")
        self._apply(event, self.population)

    def confirm(self, base: Cursor, lines: list[bytes]) -> bool:
        """Whether the journal, read from `base`, goes on with the `lines` we speculated on; then the population
        catches up with whatever follows them. False: others' lines came first (a stale view) and ours are
        void, so the population is wrong: `reset` it. A network client's cached size is waited out."""
        for _ in patience():
            found: list[bytes] = []
            self.journal.replay(base, lambda event, line, valid: found.append(line if valid else b""))
            if found[:len(lines)] != lines[:len(found)]:
                return False
            if len(found) >= len(lines):
                if len(found) > len(lines):  # others appended after ours (a lock that does not exclude)
                    self.sync()
                return True
        raise FilesystemError(self.paths.journal, "the events just appended cannot be read back", RETRIES)

    def reset(self) -> None:
        """Forget what was read: the next sync starts again from the snapshot."""
        self.population, self.cursor, self._loaded = self.empty(), Cursor(), False

    def far_behind(self) -> bool:
        """Whether catching up may take long: nothing loaded yet, or the journal (as a possibly cached stat
        says) has grown by more than CATCH_UP_BYTES. Reading a short tail under the lock saves an open,
        a round trip on a network filesystem."""
        if not self._loaded:
            return True
        try:
            return os.stat(self.paths.journal).st_size - self.cursor.offset > CATCH_UP_BYTES
        except OSError:
            return True

    def _visit(self, data: dict[str, Any], line: bytes, valid: bool) -> None:
        if valid:
            self._apply(data, self.population)
        else:
            log.debug("journal line %d is void (it does not follow the line before it): %s",
                      self.cursor.lines, line.decode(errors="replace").rstrip())
        if line == self._mine:
            self._landed = valid

    def _apply(self, data: dict[str, Any], population: Population) -> None:
        """Apply one valid journal line's event to `population`."""
        try:
            population.apply(events.decode(data))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise self._bad_event(data, f"event {population.events + 1}", err) from None

    def _bad_event(self, data: dict[str, Any], where: str, err: Exception) -> CorruptFile:
        return CorruptFile(self.paths.journal, f"{where} ({data.get('type')} of member {data.get('member')}) "
                           f"cannot be applied: {err}", "restore the file from a backup, or cut the journal before "
                           "that event and delete state.json")

    def read_events(self, cursor: Cursor = Cursor()) -> tuple[list[JournalEvent], Cursor]:
        """The journal's valid events after `cursor`, typed, and the cursor past them."""
        found: list[JournalEvent] = []
        lines = cursor.lines

        def visit(data: dict[str, Any], line: bytes, valid: bool) -> None:
            nonlocal lines
            lines += 1
            if valid:
                try:
                    found.append(events.decode(data))
                except ValueError as err:
                    raise self._bad_event(data, f"line {lines}", err) from None

        return found, self.journal.replay(cursor, visit)

    def rebuild(self) -> Population:
        """The population replayed from the whole journal, ignoring the snapshot."""
        population = self.empty()
        self.journal.replay(Cursor(), lambda data, line, valid: self._apply(data, population) if valid else None)
        return population

    def _load_snapshot(self) -> None:
        """Start from state.json when it is valid; otherwise from an empty population (full replay)."""
        try:
            population, cursor = snapshot.decode(json.loads(read_bytes(self.paths.state)))
            self._check_journal_reaches(cursor.offset)
            if not self._is_line_boundary(cursor.offset):
                raise ValueError("snapshot does not match the journal")
        except FileNotFoundError:
            return
        except (ValueError, TypeError, KeyError, AttributeError, FilesystemError):
            log.warning("%s is unreadable or stale; rebuilding it from the journal", self.paths.state)
            return
        self.population, self.cursor = population, cursor

    def _check_journal_reaches(self, offset: int) -> None:
        """A journal shorter than the snapshot lost committed events: never replay it as if nothing happened.

        A network client may report a cached size: the journal is looked at again, through fresh opens
        for about a second, before anything is said."""
        for _ in patience():
            size = retrying(lambda: _size(self.paths.journal), self.paths.journal)
            if offset <= size:
                return
        self.journal.check_lines()  # a garbage line that replaced a longer one is no truncation: name it
        raise CorruptFile(self.paths.journal, f"is shorter than state.json records ({size} < {offset} bytes): "
                              "it was truncated or replaced, so committed intervals would be lost",
                              "restore it from a backup; or, to accept the loss, delete state.json")

    def _is_line_boundary(self, offset: int) -> bool:
        if offset == 0:
            return True
        with open(self.paths.journal, "rb") as handle:
            handle.seek(offset - 1)
            return handle.read(1) == b"\n"

    def snapshot_due(self) -> bool:
        """Whether the tail since state.json (whoever wrote it) reaches the population size, or we are done."""
        pending = self.population.events - self._snapshot_events()
        return pending >= self.population.size or self.population.complete

    def _snapshot_events(self) -> int:
        """How many events state.json reflects, read again only when its attributes changed: a stat is
        answered from a network client's cache, an open is a round trip. A stale answer only makes a
        snapshot come early or late."""
        try:
            stat = os.stat(self.paths.state)
        except OSError:
            return 0
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key != self._snapshot_seen[0]:
            self._snapshot_seen = (key, events_in(self.paths.state))
        return self._snapshot_seen[1]

    def write_snapshot(self) -> None:
        """Write state.json from this replica's view; any process may, with or without the lock.

        Two writers may race and the older snapshot win: a reader then replays a longer tail.
        """
        write_json_atomic(self.paths.state, snapshot.encode(self.population, self.cursor), sync_dir=False)


def _size(path: Path) -> int:
    """The file's size as a fresh open sees it (and as reading it to the end would)."""
    with open(path, "rb") as handle:
        return handle.seek(0, os.SEEK_END)

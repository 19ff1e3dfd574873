"""Our appends to the journal: each one read back, the void ones counted, and a batch written as one append.

An event written on a stale view is void for every reader (journal.py); its writer learns that by reading its
line back, and past CONFLICT_LIMIT void appends in a row the lock evidently does not exclude. Inside `ahead()`
events are applied to the population at once and written together at its end: one fsynced write and one
read-back, a round trip each on a network filesystem, for a commit and the claim after it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator

from hopt_cli import events
from hopt_cli.errors import LockNotExclusive
from hopt_cli.events import JournalEvent
from hopt_cli.store.journal import Journal, number
from hopt_cli.store.replica import Replica

CONFLICT_LIMIT = 3  # void appends in a row: more than stale caches explain, so the lock does not exclude

log = logging.getLogger("hopt")


class Appends:
    """What one process appends to one journal, under the lock."""

    def __init__(self, journal: Journal, replica: Replica, lock_kind: str) -> None:
        self.journal = journal
        self.replica = replica
        self.lock_kind = lock_kind
        self.conflicts = 0  # our appends in a row that read back void
        self._ahead: list[bytes] | None = None  # inside `ahead()`: our lines applied, not written yet
        self._once_landed: list[Callable[[], None]] = []  # and what waits until they are in the journal

    def append(self, event: JournalEvent) -> bool:
        """Append `event` and read it back, with whatever others appended before it; True if it is
        valid. A void one (our view was stale) changed nothing, and the population is current now.
        Inside `ahead()` the event is applied at once and written with the others at its end."""
        data = events.encode(event.at(round(time.time(), 3)))
        if self._ahead is not None:
            line = number(data, self.replica.cursor)
            self.replica.speculate(line)
            self._ahead.append(line)
            return True
        line = self.journal.append(data, self.replica.cursor)
        return self._count(self.replica.read_back(line), f"{event.kind} event is")

    def append_while(self, event: JournalEvent, wanted: Callable[[], bool]) -> bool:
        """Append `event` until it lands valid, as long as `wanted()` holds for the state read back."""
        while wanted():
            if self.append(event):
                return True
        return False

    def when_landed(self, action: Callable[[], None]) -> None:
        """Run `action` once the events appended so far are in the journal: now, or at the end of `ahead()`."""
        if self._ahead is None:
            action()
        else:
            self._once_landed.append(action)

    @contextlib.contextmanager
    def ahead(self) -> Iterator[Callable[[], bool]]:
        """Inside, events are applied to the population at once and written at the end in one append, read back
        once. Yields whether they landed, known after the block; if not (our view was stale), the population is
        reset to be read again and what waited for them (`when_landed`) is not done. Deletions made inside must
        be ones that no view could regret."""
        base = self.replica.cursor
        self._ahead, self._once_landed = [], []
        landed = True
        try:
            yield lambda: landed
        finally:
            lines, actions, self._ahead, self._once_landed = self._ahead, self._once_landed, None, []
            if lines:
                self.journal.append_lines(lines)
                landed = self.replica.confirm(base, lines)
                self._count(landed, "" if landed else _described(lines))
            if landed:
                for action in actions:
                    action()
            else:
                self.replica.reset()

    def _count(self, landed: bool, what: str) -> bool:
        """Keep count of our void appends in a row; past CONFLICT_LIMIT the lock does not exclude: stop."""
        self.conflicts = 0 if landed else self.conflicts + 1
        if not landed:
            log.warning("our %s void: other workers appended to the journal after we last read it (a stale "
                        "cache, or a lock that did not exclude); read again", what)
        if self.conflicts >= CONFLICT_LIMIT:
            raise LockNotExclusive(self.journal.path, self.conflicts, self.lock_kind)
        return landed


def _described(lines: list[bytes]) -> str:
    """What the void `lines` were, for the warning: "commit and claim events are"."""
    kinds = " and ".join(json.loads(line)["type"] for line in lines)
    return f"{kinds} event" + (" is" if len(lines) == 1 else "s are")

"""The experiment lock: short critical sections around claim and commit, in two kinds.

`flock` (the default): the kernel drops it when its holder dies, even on SIGKILL. Its file `lock` is
never deleted; if an operator deletes or replaces it anyway, a locker notices that its descriptor no
longer names the file and takes the lock again on the new one, so waiters cannot split across inodes.

`hardlink`, for shared filesystems where flock is not exclusive across nodes (NFS with `local_lock`,
Lustre without `-o flock`): the classic NFS-safe lock. A would-be holder writes a unique file naming
itself and hard-links it to `lock.link`; it holds the lock when its file then has two links (checked
even when link() reports an error, which NFS may do for a link that succeeded). A holder whose process
is gone (same host and pid namespace) is broken at once, any other after `STALE_SECONDS` on the
filesystem's clock; breakers take turns (see `_break_if_stale`). Breaking by age can still let a holder
that stalled for STALE_SECONDS overlap with the next; then fencing tokens and the journal's order keep
the data correct.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hopt_cli.errors import HoptError
from hopt_cli.store.fsio import touch
from hopt_cli.store.leases import Holder
from hopt_cli.store.paths import ExperimentPaths

POLL_SECONDS = 0.001  # fixed and short: with backoff, one worker ran ahead of the rest and PBT did worse
STALE_SECONDS = 60.0  # a hard-link lock this old is broken; critical sections take milliseconds

log = logging.getLogger("hopt")


class LockTimeout(HoptError):
    """The lock could not be taken in time; carries the lock file's path."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(f"{path}: could not take the experiment lock in {timeout:.0f} s; "
                         "a process may hang inside a critical section (check `hopt status`)")
        self.path = path


class ExperimentLock:
    """A blocking, non-reentrant, inter-process lock; records how long it waited and held.

    The base class owns the timeout and the polling; a kind implements `_try_acquire` (one
    non-blocking attempt) and `_release`. Process-safe, not thread-safe: one holder per instance.
    """

    kind = ""

    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        self.path = path
        self.timeout = timeout
        self.waited = 0.0
        self.held_since = 0.0
        self.held = 0.0

    def __enter__(self) -> ExperimentLock:
        started = time.perf_counter()
        try:
            while not self._try_acquire():
                if time.perf_counter() - started > self.timeout:
                    raise LockTimeout(self.path, self.timeout)
                time.sleep(POLL_SECONDS)
        except BaseException:
            self._abandon()
            raise
        self.held_since = time.perf_counter()
        self.waited = self.held_since - started
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._release()
        self.held = time.perf_counter() - self.held_since

    def _try_acquire(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        """Clean up after giving up waiting (timeout, Ctrl-C)."""


class FlockLock(ExperimentLock):
    """flock(2) on `lock`; released by the kernel when the holder's descriptor closes or it dies."""

    kind = "flock"

    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        super().__init__(path, timeout)
        self._fd: int | None = None

    def _try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        if not _names_file(fd, self.path):
            os.close(fd)  # we locked a file that was deleted or replaced meanwhile: it guards nothing
            log.warning("%s was deleted or replaced while in use (never delete it); locking the new file",
                        self.path)
            return False
        self._fd = fd
        return True

    def _release(self) -> None:
        if self._fd is None:
            return
        if not _names_file(self._fd, self.path):
            log.warning("%s was deleted or replaced while we held it (never delete it): another process may "
                        "have locked the new file meanwhile; fencing tokens and the journal's order keep the "
                        "data right", self.path)
        os.close(self._fd)
        self._fd = None


def _names_file(fd: int, path: Path) -> bool:
    """Whether the open descriptor `fd` is still the file at `path`."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


@dataclass(frozen=True)
class _Stale:
    seen: os.stat_result
    token: str | None
    reason: str


def _link(claim: Path, lock: Path) -> bool:
    """Try to take `lock` by hard-linking our unique `claim` to it; True when we hold it.

    Judged by the claim's link count, not by link()'s result: over NFS a link that succeeded may
    report an error (a retransmitted request), and one that failed never adds a link.
    """
    with contextlib.suppress(OSError):
        os.link(claim, lock)
    return os.stat(claim).st_nlink == 2


def _unlink_if_same(path: Path, seen: os.stat_result) -> bool:
    """Unlink `path` if it is still the file `seen`; True if it was."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
        return False
    os.unlink(path)
    return True


class HardLinkLock(ExperimentLock):
    """link(2) of a unique file to `lock.link`; see the module docstring for breaking stale locks."""

    kind = "hardlink"

    def __init__(self, paths: ExperimentPaths, timeout: float = 600.0, stale_after: float = STALE_SECONDS) -> None:
        super().__init__(paths.hardlink_lock, timeout)
        self.paths = paths
        self.stale_after = stale_after
        self.here = Holder.this_process("lock")
        self._mine: Path | None = None

    def _try_acquire(self) -> bool:
        if self._mine is None:
            self._mine = self._write_claim()
        try:
            won = _link(self._mine, self.path)
        except FileNotFoundError:  # collected as a dead waiter's (we waited longer than the lock timeout)
            self._mine = None
            return False
        if won:
            touch(self._mine)  # the lock's age counts from now, not from when we started waiting
            return True
        self._break_if_stale()
        return False

    def _write_claim(self) -> Path:
        token = secrets.token_hex(8)
        path = self.paths.hardlink_claim(token)
        data = json.dumps({"holder": dataclasses.asdict(self.here), "token": token}).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def _break_if_stale(self) -> None:
        """Remove a stale lock, one breaker at a time.

        Breakers serialise on a second hard-link lock (`lock.link.break`). Its holder re-checks that
        `lock.link` is still the stale file before unlinking it, and nothing can replace that file
        meanwhile: its holder is gone, other breakers wait, and link() fails while it exists. Without
        this, a slow breaker could unlink a lock that a faster one had broken and a third had retaken.
        """
        stale = self._stale(self.path)
        if stale is None:
            return
        breaker = self._write_claim()
        try:
            if not _link(breaker, self.paths.hardlink_breaker):
                dead_breaker = self._stale(self.paths.hardlink_breaker)
                if dead_breaker is not None:  # a breaker died mid-break: clear the way for the next attempt
                    _unlink_if_same(self.paths.hardlink_breaker, dead_breaker.seen)
                return
            try:
                if _unlink_if_same(self.path, stale.seen):
                    log.warning("broke the experiment lock %s: %s", self.path, stale.reason)
                    if stale.token is not None:
                        self.paths.hardlink_claim(stale.token).unlink(missing_ok=True)
            finally:
                _unlink_if_same(self.paths.hardlink_breaker, os.stat(breaker))
        finally:
            breaker.unlink(missing_ok=True)

    def _stale(self, path: Path) -> _Stale | None:
        """Why the lock file `path` is stale (its holder is gone, or it is too old), or None if it is not."""
        try:
            with open(path, "rb") as handle:
                seen = os.fstat(handle.fileno())
                content = json.loads(handle.read())
            holder, token = Holder(**content["holder"]), str(content["token"])
        except FileNotFoundError:
            return None  # released meanwhile: the next attempt may win
        except (ValueError, TypeError, KeyError, OSError):
            holder, token = None, None  # unreadable: only its age can tell
        if holder is not None and holder.is_gone(self.here):
            return _Stale(seen, token, f"its holder (pid {holder.pid} on this host) is gone")
        age = touch(self.paths.clock) - seen.st_mtime
        if age > self.stale_after:
            return _Stale(seen, token, f"held for {age:.0f} s (limit {self.stale_after:.0f} s)")
        return None

    def _abandon(self) -> None:
        if self._mine is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._mine)
            self._mine = None

    def _release(self) -> None:
        mine = self._mine
        self._mine = None
        if mine is None:
            return
        try:
            current = os.stat(self.path)
            ours = os.stat(mine)
            if (current.st_dev, current.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(self.path)
            else:
                log.warning("%s was broken while we held it (judged stale); fencing tokens keep the data safe",
                            self.path)
        except FileNotFoundError:
            log.warning("%s vanished while we held it (deleted by hand?)", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mine)


def abandoned_claims(paths: ExperimentPaths, here: Holder, now: float, older_than: float) -> list[Path]:
    """Unique files of hard-link lockers that died waiting or breaking: not linked to a lock, and their
    process is gone or they are older than any waiter waits. `now` is the filesystem's clock."""
    held = set()
    for lock in (paths.hardlink_lock, paths.hardlink_breaker):
        with contextlib.suppress(FileNotFoundError):
            seen = os.stat(lock)
            held.add((seen.st_dev, seen.st_ino))
    found = []
    for path in paths.hardlink_claims():
        try:
            seen = os.stat(path)
            holder: Holder | None = Holder(**json.loads(path.read_bytes())["holder"])
        except FileNotFoundError:
            continue
        except (ValueError, TypeError, KeyError, OSError):
            holder = None
        if (seen.st_dev, seen.st_ino) in held:
            continue
        if (holder is not None and holder.is_gone(here)) or now - seen.st_mtime > older_than:
            found.append(path)
    return found


def make_lock(kind: str, paths: ExperimentPaths, timeout: float = 600.0) -> ExperimentLock:
    """The experiment lock of the recipe's kind."""
    if kind == "hardlink":
        return HardLinkLock(paths, timeout)
    return FlockLock(paths.lock, timeout)

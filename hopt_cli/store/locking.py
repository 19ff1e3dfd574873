"""The experiment lock: short critical sections around claim and commit, in two kinds.

`flock` (the default): the kernel drops it when its holder dies, even on SIGKILL. Its file `lock` is
never deleted; if an operator deletes or replaces it anyway, a locker notices that its descriptor no
longer names the file and takes the lock again on the new one, so waiters cannot split across inodes.

`hardlink`, for shared filesystems where flock is not exclusive across nodes (filesystems.py's table
says which: sshfs, NFS with `local_lock`, Lustre without `-o flock`, ...): the classic NFS-safe lock. A
would-be holder writes a unique file holding its token and hard-links it to `lock.link`: a link() that
succeeds wins. When link() reports an error, the holder of `lock.link` is read from its content: NFS
may report an error for a retransmitted link that succeeded. Link counts and inode numbers are never
consulted: on sshfs a successful link leaves st_nlink at 1 and gives each name its own inode number.
A holder whose process is gone (same host and pid namespace) is broken at once, any other after
`STALE_SECONDS` on the filesystem's clock; breakers take turns (see `_break_if_stale`). Breaking by age
can still let a holder that stalled for STALE_SECONDS overlap with the next: the journal's sequence
numbers then void the later writer's events.
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

from hopt_cli.errors import HoptError, LockTimeout
from hopt_cli.store.fsio import touch
from hopt_cli.store.leases import Holder
from hopt_cli.store.filesystems import flock_problem
from hopt_cli.store.paths import ExperimentPaths

POLL_SECONDS = 0.001  # fixed and short: with backoff, one worker ran ahead of the rest and PBT did worse
STALE_SECONDS = 15.0  # a hard-link lock this old is broken: critical sections take milliseconds, and a holder
# that only stalled and overlaps with the next has its late events voided by the journal's sequence numbers

log = logging.getLogger("hopt")


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


class KernelFlock(ExperimentLock):
    """flock(2) on one file and nothing more; released by the kernel when the holder's descriptor closes
    or it dies. `hopt doctor --peer` measures with it what flock does on a filesystem."""

    kind = "flock"

    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        super().__init__(path, timeout)
        self._fd: int | None = None

    def _try_acquire(self) -> bool:
        """One attempt, on a descriptor a waiter keeps open between its attempts: on a network filesystem an
        open and a close are a round trip each, and a waiter polls every millisecond while the holder works."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except BaseException:
            self._close()
            raise
        return True

    def _release(self) -> None:
        self._close()

    def _abandon(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FlockLock(KernelFlock):
    """The experiment's flock on `lock`: refused where the filesystems table says flock does not exclude across
    nodes, and taken again if the file was deleted or replaced under us."""

    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        super().__init__(path, timeout)
        self._checked = False

    def _try_acquire(self) -> bool:
        if not self._checked:
            self._refuse_a_filesystem_where_flock_does_not_exclude()
        if not super()._try_acquire():
            return False
        if not _names_file(self._fd, self.path):
            self._close()  # we locked a file that was deleted or replaced meanwhile: it guards nothing
            log.warning("%s was deleted or replaced while in use (never delete it); locking the new file",
                        self.path)
            return False
        return True

    def _refuse_a_filesystem_where_flock_does_not_exclude(self) -> None:
        problem = flock_problem(self.path.parent)
        if problem is not None:
            raise HoptError(f"{self.path.parent}: {problem}, so workers on two nodes could both hold the "
                            "experiment lock; use `lock: hardlink` (in the recipe, or in experiment.yaml while "
                            "no worker runs); `hopt doctor --dir D` tests a filesystem")
        self._checked = True

    def _release(self) -> None:
        if self._fd is None:
            return
        if not _names_file(self._fd, self.path):
            log.warning("%s was deleted or replaced while we held it (never delete it): another process may "
                        "have locked the new file meanwhile; the journal's sequence numbers void whatever it "
                        "wrote on a stale view", self.path)
        super()._release()


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
    content: bytes  # what the stale file holds: its token makes it unique
    token: str | None  # None when the content is not a lock file's
    reason: str


def _token_of(path: Path) -> str | None:
    """The token written in a lock or claim file; None if it is gone or unreadable."""
    try:
        return str(json.loads(path.read_bytes())["token"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _link(claim: Path, token: str, lock: Path) -> bool:
    """Try to take `lock` by hard-linking our unique `claim` (holding `token`) to it; True when we hold it.

    A link() that succeeds wins. On an error the lock's content decides: over NFS a link that
    succeeded may report one (a retransmitted request). A missing claim (collected) raises.
    """
    try:
        os.link(claim, lock)
        return True
    except FileNotFoundError:
        if not claim.exists():
            raise
        return False
    except OSError:
        return _token_of(lock) == token


def _unlink_if_token(path: Path, token: str) -> bool:
    """Unlink `path` if it still holds `token`; True if it did."""
    return _token_of(path) == token and _unlink(path)


def _unlink_if_content(path: Path, content: bytes) -> bool:
    """Unlink `path` if it still holds exactly `content`; True if it did."""
    try:
        same = path.read_bytes() == content
    except OSError:
        return False
    return same and _unlink(path)


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class HardLinkLock(ExperimentLock):
    """link(2) of a unique file to `lock.link`; see the module docstring for breaking stale locks."""

    kind = "hardlink"

    def __init__(self, paths: ExperimentPaths, timeout: float = 600.0, stale_after: float = STALE_SECONDS) -> None:
        super().__init__(paths.hardlink_lock, timeout)
        self.paths = paths
        self.stale_after = stale_after
        self.here = Holder.this_process("lock")
        self._mine: tuple[Path, str] | None = None

    def _try_acquire(self) -> bool:
        if self._mine is None:
            self._mine = self._write_claim()
        claim, token = self._mine
        try:
            won = _link(claim, token, self.path)
        except FileNotFoundError:  # collected as a dead waiter's (we waited longer than the lock timeout)
            self._mine = None
            return False
        if won:
            touch(claim)  # the lock's age counts from now, not from when we started waiting
            return True
        self._break_if_stale()
        return False

    def _write_claim(self) -> tuple[Path, str]:
        token = secrets.token_hex(8)
        path = self.paths.hardlink_claim(token)
        data = json.dumps({"holder": dataclasses.asdict(self.here), "token": token}).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path, token

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
        breaker, token = self._write_claim()
        try:
            if not _link(breaker, token, self.paths.hardlink_breaker):
                dead_breaker = self._stale(self.paths.hardlink_breaker)
                if dead_breaker is not None:  # a breaker died mid-break: clear the way for the next attempt
                    _unlink_if_content(self.paths.hardlink_breaker, dead_breaker.content)
                return
            try:
                if _unlink_if_content(self.path, stale.content):
                    log.warning("broke the experiment lock %s: %s", self.path, stale.reason)
                    if stale.token is not None:
                        self.paths.hardlink_claim(stale.token).unlink(missing_ok=True)
            finally:
                _unlink_if_token(self.paths.hardlink_breaker, token)
        finally:
            breaker.unlink(missing_ok=True)

    def _stale(self, path: Path) -> _Stale | None:
        """Why the lock file `path` is stale (its holder is gone, or it is too old), or None if it is not.

        A file that cannot be read now (a transient ESTALE) is looked at again at the next attempt."""
        try:
            with open(path, "rb") as handle:
                seen = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            return None  # released meanwhile: the next attempt may win
        except OSError:
            return None  # ESTALE and the like: look again at the next attempt
        try:
            content = json.loads(data)
            holder, token = Holder(**content["holder"]), str(content["token"])
        except (ValueError, TypeError, KeyError):
            holder, token = None, None
        if holder is not None and holder.is_gone(self.here):
            return _Stale(data, token, f"its holder (pid {holder.pid} on this host) is gone")
        age = touch(self.paths.clock) - seen.st_mtime
        if age > self.stale_after:
            return _Stale(data, token, f"held for {age:.0f} s (limit {self.stale_after:.0f} s)")
        return None

    def _abandon(self) -> None:
        if self._mine is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._mine[0])
            self._mine = None

    def _release(self) -> None:
        mine = self._mine
        self._mine = None
        if mine is None:
            return
        claim, token = mine
        if not _unlink_if_token(self.path, token):
            log.warning("%s was broken while we held it (judged stale, or deleted by hand); the journal's "
                        "sequence numbers void whatever a second holder wrote meanwhile", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(claim)


def abandoned_claims(paths: ExperimentPaths, here: Holder, now: float, older_than: float) -> list[Path]:
    """Unique files of hard-link lockers that died waiting or breaking: not linked to a lock, and their
    process is gone or they are older than any waiter waits. `now` is the filesystem's clock."""
    held = {_token_of(lock) for lock in (paths.hardlink_lock, paths.hardlink_breaker)}
    found = []
    for path in paths.hardlink_claims():
        try:
            seen = os.stat(path)
            content = json.loads(path.read_bytes())
            holder: Holder | None = Holder(**content["holder"])
            token = str(content["token"])
        except FileNotFoundError:
            continue
        except (ValueError, TypeError, KeyError, OSError):
            holder, token = None, None
        if token is not None and token in held:
            continue
        if (holder is not None and holder.is_gone(here)) or now - seen.st_mtime > older_than:
            found.append(path)
    return found


def make_lock(kind: str, paths: ExperimentPaths, timeout: float = 600.0) -> ExperimentLock:
    """The experiment lock of the recipe's kind."""
    if kind == "hardlink":
        return HardLinkLock(paths, timeout)
    return FlockLock(paths.lock, timeout)

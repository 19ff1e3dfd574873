"""Crash-safe file primitives: atomic replace, whole-line appends, directory fsync, and reads that
outlast the transient errors of network filesystems."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hopt_cli.errors import FilesystemError

TEMP_MARK = ".tmp-"
TRANSIENT = frozenset({errno.ESTALE, errno.EIO})  # a FUSE or NFS client's file handle went stale, or a hiccup
RETRIES = 8  # attempts; the waits between them double from RETRY_SECONDS: about 2.5 s in all (GlusterFS's
# stale file handles after another mount replaced a file last about its 1 s entry timeout)
RETRY_SECONDS = 0.02
T = TypeVar("T")


def patience() -> Iterator[int]:
    """Attempts 0 .. RETRIES-1, waiting before each but the first (RETRY_SECONDS, doubling): how long
    anything waits for a network filesystem's transient state to pass."""
    for attempt in range(RETRIES):
        if attempt:
            time.sleep(RETRY_SECONDS * 2 ** (attempt - 1))
        yield attempt


def retrying(action: Callable[[], T], path: Path) -> T:
    """`action()`, tried again after a transient error (ESTALE, EIO) of the filesystem holding `path`.

    Past RETRIES attempts it is one FilesystemError naming the file; other errors pass through.
    """
    problem = ""
    for _ in patience():
        try:
            return action()
        except OSError as err:
            if err.errno not in TRANSIENT:
                raise
            problem = err.strerror or str(err)
    raise FilesystemError(path, problem, RETRIES)


@contextlib.contextmanager
def unless_gone() -> Iterator[None]:
    """Skip an operation on an entry that is gone: missing, or (ESTALE) moved by another node since we listed it."""
    try:
        yield
    except FileNotFoundError:
        pass
    except OSError as err:
        if err.errno != errno.ESTALE:
            raise


def read_bytes(path: Path) -> bytes:
    """The whole file, outlasting transient errors; FileNotFoundError when it is not there."""
    return retrying(path.read_bytes, path)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o666, sync_dir: bool = True, durable: bool = True) -> None:
    """Write `data` so that readers see the old file or the new one, never a part (umask applies).

    `sync_dir=False` skips making the rename itself durable, for files that a crash may roll back to
    their previous version without harm (a lease, the snapshot): one fsync less inside the lock.
    `durable=False` skips the data's fsync too (5 ms on a local disk), for a file whose content a power
    cut may lose without harm (an interval's log): a running reader still never sees a part of it.
    """
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, sync_dir: bool = True, durable: bool = True) -> None:
    write_atomic(path, (json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n").encode(),
                 sync_dir=sync_dir, durable=durable)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Publish `data` at `path` only if nothing is there yet; False if another writer won the race."""
    temp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    write_atomic(temp, data)
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
        fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> int:
    """Append one whole line with a single write and fsync; returns the file's new size."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def touch(path: Path) -> float:
    """Set `path`'s mtime to the filesystem's now and return it."""
    os.utime(path)
    return os.stat(path).st_mtime


def is_temporary(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name

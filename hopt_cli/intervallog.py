"""One interval's output, cut from the worker's own log: what `hopt log --member M --interval I` shows;
and the worker's log itself, kept below a size.

A worker's log interleaves its members, and a trainable writes from wherever it likes: Python's
print, a C library, a child process. Whatever lands in the worker's stderr file between the start of
an interval and its end is that interval's output, however it got there; so hopt marks the file's size
when an interval starts and reads the bytes added when it ends. Nothing is redirected. Under `hopt run`
and `hopt slurm` stderr is a file of its own per worker; where it is not a regular file (a terminal, a
pipe) there is no interval log.

A trainable may print without bound, so a worker watches its log (`bound()`): past CAP bytes it cuts
the file back to its first HEAD bytes, a line saying so, and its last LIMIT bytes, which hold the end of
the interval in flight as its interval log keeps it. Writers append, so what they write next follows.
"""
from __future__ import annotations

import atexit
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

LIMIT = 4 << 20  # bytes of one interval's output kept: its end, which says how it ended
CAP = 64 << 20  # bytes a worker's log may reach before it is cut
HEAD = 1 << 20  # bytes of its start a cut log keeps: the worker's first lines
WATCH_SECONDS = 0.1  # how often a worker looks at its log's size; a trainable's output may pass CAP meanwhile


@dataclass(frozen=True)
class Cut:
    """One cut of the worker's log: bytes [head, kept) are gone; those from `kept` on moved to `to`."""

    head: int
    kept: int
    to: int

    def moved(self, offset: int) -> tuple[int, int]:
        """Where a byte that was at `offset` is now, and how many bytes from it on were cut."""
        if offset <= self.head:
            return offset, 0  # what follows holds the line that says what was cut
        if offset >= self.kept:
            return offset - self.kept + self.to, 0
        return self.to, self.kept - offset


_cuts: list[Cut] = []  # this process's cuts of its log, in order
_lock = threading.Lock()  # a cut and the reading of an interval's output never overlap


@dataclass
class LogMark:
    """The worker's stderr file, opened for reading, its size when the interval started, and how many
    cuts of the log there had been then."""

    handle: BinaryIO
    start: int
    cuts: int = 0

    def output(self) -> bytes:
        """What was written since the mark (its last LIMIT bytes), and close the file."""
        _flush()
        try:
            with _lock, self.handle:
                start, lost = self.start, 0
                for cut in _cuts[self.cuts:]:
                    start, gone = cut.moved(start)
                    lost += gone
                added = os.fstat(self.handle.fileno()).st_size - start
                skipped = max(0, added - LIMIT)
                self.handle.seek(start + skipped)
                data = self.handle.read(added - skipped)
        except OSError as err:  # the log's filesystem failed us: the interval goes on without its log
            return f"[hopt: this interval's output could not be read back from the worker's log: {err}]\n".encode()
        if skipped or lost:
            where = "the worker's log was cut there too" if lost else "the worker's log has them"
            data = f"[hopt: the first {lost + skipped} bytes of this interval's output are cut here; {where}]\n" \
                .encode() + data
        return data


def mark() -> LogMark | None:
    """Mark where this process's stderr file stands now; None when stderr is no regular file."""
    _flush()
    try:
        if not stat.S_ISREG(os.fstat(2).st_mode):  # never open a pipe for reading: it would take its data
            return None
        handle = open("/proc/self/fd/2", "rb")  # a reading description of that file; output() closes it
    except OSError:
        return None
    with _lock:
        return LogMark(handle, os.fstat(handle.fileno()).st_size, len(_cuts))


def bound() -> None:
    """Keep this process's stderr file below CAP bytes, from now until the process exits (a thread looks
    every WATCH_SECONDS, and once more at exit); nothing when stderr is no regular file."""
    try:
        if not stat.S_ISREG(os.fstat(2).st_mode):
            return
    except OSError:
        return
    threading.Thread(target=_watch, name="hopt-log-bound", daemon=True).start()
    atexit.register(cut_if_large)


def _watch() -> None:
    while True:
        time.sleep(WATCH_SECONDS)  # polling a size: nothing to wait on
        cut_if_large()


def cut_if_large(fd: int = 2) -> None:
    """Cut the log open as `fd` back to HEAD bytes, a line saying so and its last LIMIT bytes, if it
    holds more than CAP. Bytes written between our reading its end and the cut are lost with the middle."""
    _flush()
    with _lock:
        try:
            size = os.fstat(fd).st_size
            if size <= CAP:
                return
            kept = size - LIMIT
            with open(f"/proc/self/fd/{fd}", "rb") as reader:  # the log is open for writing only
                reader.seek(kept)
                tail = reader.read(LIMIT)
            os.ftruncate(fd, HEAD)
            cut = sum(c.kept - c.head for c in _cuts) + kept - HEAD
            note = (f"\n[hopt: {cut} bytes of this log are cut here (cuts: {len(_cuts) + 1}, the last at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}): it passed {CAP >> 20} MiB: a worker's log keeps its "
                    f"first {HEAD >> 20} MiB and, at each cut, "
                    f"its last {LIMIT >> 20} MiB; `hopt log --member M --interval I` shows each interval's own "
                    "output]\n").encode()
            os.lseek(fd, 0, os.SEEK_END)  # where a writer that does not append goes on, too
            written = memoryview(note + tail)
            while written:
                written = written[os.write(fd, written):]
            _cuts.append(Cut(HEAD, kept, os.lseek(fd, 0, os.SEEK_CUR) - len(tail)))
        except OSError:  # the log's filesystem failed us: the log stays as it is, the worker goes on
            return


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing of it reaches the file anyway
                pass

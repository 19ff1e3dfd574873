"""One interval's output, cut from the worker's own log: what `hopt log --member M --interval I` shows.

A worker's log interleaves its members, and a trainable writes from wherever it likes: Python's
print, a C library, a child process. Whatever lands in the worker's stderr file between the start of
an interval and its end is that interval's output, however it got there; so hopt marks the file's size
when an interval starts and reads the bytes added when it ends. Nothing is redirected, and the worker's
log keeps everything. Under `hopt run` and `hopt slurm` stderr is a file of its own per worker; where it
is not a regular file (a terminal, a pipe) there is no interval log.
"""
from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from typing import BinaryIO

LIMIT = 4 << 20  # bytes of one interval's output kept: its end, which says how it ended


@dataclass
class LogMark:
    """The worker's stderr file, opened for reading, and its size when the interval started."""

    handle: BinaryIO
    start: int

    def output(self) -> bytes:
        """What was written since the mark (its last LIMIT bytes), and close the file."""
        _flush()
        try:
            with self.handle:
                added = os.fstat(self.handle.fileno()).st_size - self.start
                skipped = max(0, added - LIMIT)
                self.handle.seek(self.start + skipped)
                data = self.handle.read(added - skipped)
        except OSError as err:  # the log's filesystem failed us: the interval goes on without its log
            return f"[hopt: this interval's output could not be read back from the worker's log: {err}]\n".encode()
        if skipped:
            data = f"[hopt: the first {skipped} bytes of this interval's output are cut here; the worker's log has " \
                   f"them]\n".encode() + data
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
    return LogMark(handle, os.fstat(handle.fileno()).st_size)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: nothing of it reaches the file anyway
                pass

"""The experiment lock: short critical sections around claim and commit.

flock (store/flock.py) by default: the kernel drops it when its holder dies, even on SIGKILL.
The lock file is never deleted (deleting it would split waiters across two inodes).
"""
from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from hopt_cli.errors import HoptError
from hopt_cli.store.flock import Flock


class ExperimentLock:
    """A blocking, non-reentrant, inter-process lock on `path`; records how long it last waited and held."""

    def __init__(self, path: Path, timeout: float = 600.0) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = Flock(path)
        self.waited = 0.0
        self.held_since = 0.0
        self.held = 0.0

    def __enter__(self) -> ExperimentLock:
        started = time.perf_counter()
        if not self._lock.acquire(self.timeout):
            raise HoptError(f"{self.path}: could not take the experiment lock in {self.timeout:.0f} s; "
                            "a process may hang inside a critical section (check `hopt status`)")
        self.held_since = time.perf_counter()
        self.waited = self.held_since - started
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._lock.release()
        self.held = time.perf_counter() - self.held_since

"""The stop signals, in one place: which signals stop a worker, a local run and a task's workers, which
ones a trainable's child process ignores, and `StopSignals`, whose handler only records what arrived.

A worker stops on SIGTERM, SIGINT and its preemption signal (SIGUSR1 unless `--preempt-signal USR2`;
`sbatch --signal=B:USR1@grace` sends it); `hopt run` stops on SIGINT, SIGTERM and SIGHUP (a closed
terminal) and passes the stop on to its workers; an isolated trainable's child ignores every signal a
worker may stop on, since its worker decides when it ends.
"""
from __future__ import annotations

import signal
from collections.abc import Sequence
from types import FrameType
from typing import Any

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # what --preempt-signal may name
WORKER_STOPS = (signal.SIGTERM, signal.SIGINT)  # a worker's, besides its preemption signal
RUN_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # `hopt run`'s, forwarded to its workers as SIGTERM
CHILD_IGNORES = (*WORKER_STOPS, *PREEMPTION_SIGNALS)  # an isolated trainable's child process


class StopSignals:
    """Records the stop signals that arrive: the first, and how many; the loop acts on them.

    Stops on `stops` and the `preemption` signal (None: no preemption signal). The handler only sets
    state; it never does the work itself. Install from the main thread.
    """

    def __init__(self, preemption: signal.Signals | None = signal.SIGUSR1,
                 stops: Sequence[signal.Signals] = WORKER_STOPS) -> None:
        self.preemption = preemption
        self.signals = tuple(dict.fromkeys((*stops, *([preemption] if preemption else []))))
        self.first: signal.Signals | None = None
        self.count = 0
        self._previous: dict[signal.Signals, Any] = {}

    def install(self) -> StopSignals:
        if self._previous:  # installed already: keep the handlers to restore
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self.handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: remember the signal."""
        self.first = self.first or signal.Signals(signum)
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.first is not None

    @property
    def preempted(self) -> bool:
        """Whether the first signal was the preemption signal (then the worker may requeue itself)."""
        return self.first is not None and self.first == self.preemption

    @property
    def signal_name(self) -> str | None:
        return None if self.first is None else self.first.name

"""StopSignals, the one owner of stop signals: what a worker, `hopt run` and a trainable's child stop on or ignore,
and a handler that only records (called directly, and by a real signal)."""
from __future__ import annotations

import os
import signal
import time

from hopt_cli.signals import CHILD_IGNORES, PREEMPTION_SIGNALS, RUN_STOPS, StopSignals


def test_handler_records_the_first_signal_and_counts_them_all() -> None:
    stops = StopSignals()
    assert not stops.requested and stops.signal_name is None and stops.count == 0
    stops.handle(signal.SIGUSR1, None)
    stops.handle(signal.SIGTERM, None)
    assert stops.requested and stops.preempted and stops.signal_name == "SIGUSR1" and stops.count == 2


def test_sigterm_is_a_stop_but_not_a_preemption() -> None:
    stops = StopSignals(preemption=signal.SIGUSR2)
    stops.handle(signal.SIGTERM, None)
    assert stops.requested and not stops.preempted and stops.signal_name == "SIGTERM"
    assert stops.signals == (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def test_a_run_stops_on_a_closed_terminal_too_and_a_task_on_its_preemption_signal() -> None:
    assert StopSignals(None, RUN_STOPS).signals == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    task = StopSignals(signal.SIGUSR1, RUN_STOPS)
    assert task.signals == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
    task.handle(signal.SIGHUP, None)
    assert not task.preempted


def test_a_trainables_child_ignores_every_signal_a_worker_may_stop_on() -> None:
    for preemption in PREEMPTION_SIGNALS:
        assert set(StopSignals(preemption).signals) <= set(CHILD_IGNORES)


def test_real_signal_is_recorded_and_handlers_restored() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals() as stops:
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not stops.requested and time.monotonic() < deadline:
            time.sleep(0.01)  # the handler runs between bytecodes of this thread: wait for it, bounded
        assert stops.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before

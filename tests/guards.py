"""A hang guard for long integration tests: it judges progress, never the wall clock of a whole run.

A loaded machine makes a run slower, not stuck; a test fails only when the experiment made no progress
for `patience` seconds, which no working run comes near (a stalled member is reclaimed within its lease
timeout, and every test's recipe sets that well below the patience).
"""
from __future__ import annotations

import time

import pytest


class Stall:
    """Fails the test when the count of committed intervals stays the same for `patience` seconds."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.done = -1
        self.since = time.monotonic()

    def check(self, done: int, what: str) -> None:
        """Note `done` intervals; fail if that count has not grown for `patience` seconds."""
        now = time.monotonic()
        if done > self.done:
            self.done, self.since = done, now
        elif now - self.since > self.patience:
            pytest.fail(f"no progress for {self.patience:.0f} s at {done} intervals: {what}")

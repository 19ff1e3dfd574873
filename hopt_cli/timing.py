"""What the worker loop's critical sections cost, as one DEBUG log line per step.

`hopt worker --verbose` writes them; benchmarks/overhead.py reads them back from the workers' logs to
report claim and commit times and lock wait and hold percentiles, and a user can read them to see
whether a slow shared filesystem or lock contention is what limits throughput.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

TAG = "timing"
# again: an adoption or a claim on a stale view, tried again at once; busy: every free member was leased;
# done: nothing left
STEPS = ("claim", "again", "busy", "done", "commit")


@dataclass(frozen=True)
class StepTiming:
    """One step around the experiment lock, in seconds: waiting for it, holding it, and the whole step."""

    step: str
    waited: float
    held: float
    total: float
    at: float  # when the step ended (time.time()), to tell start-up from the steady state

    def __str__(self) -> str:
        return f"{TAG} {json.dumps(asdict(self), separators=(',', ':'))}"

    @classmethod
    def parse(cls, line: str) -> StepTiming | None:
        """The record a log line carries, or None for any other line."""
        _, found, rest = line.partition(f"{TAG} {{")
        if not found:
            return None
        try:
            return cls(**json.loads("{" + rest))
        except (ValueError, TypeError):
            return None

"""Every seed hopt derives from the experiment's: one per decision, one per interval a trainable trains.

Both are pure functions of their arguments, so a worker, the simulator and a replay draw the same numbers.
"""
from __future__ import annotations

import numpy as np
import numpy.random  # noqa: F401 (numpy imports it lazily: on a worker's first claim, under the lock)


def decision_rng(seed: int, member: int, interval: int, attempt: int) -> np.random.Generator:
    """The generator for one decision, seeded by (experiment seed, member, interval, attempt)."""
    return np.random.default_rng([seed, member, interval, attempt])


def trainable_seed(seed: int, member: int, interval: int) -> int:
    """The seed a trainable gets for one interval; a retried interval gets the same one."""
    return int(np.random.SeedSequence([seed, member, interval]).generate_state(1)[0])

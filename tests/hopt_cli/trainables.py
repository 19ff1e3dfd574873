"""Trainables the tests need beyond the toys: one that blocks mid-interval, one that fails."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from workers.noop import noop
from workers.toys import pbt_quadratic


def block_once(ctx: Any) -> dict[str, float]:
    """Like T1, but the first time member 0 trains interval 3 it announces itself and never returns.

    The test SIGKILLs the worker while it hangs here; the retry after the restart proceeds normally.
    """
    marker = Path(os.environ["HOPT_TEST_MARKER"])
    if ctx.member == 0 and ctx.interval == 3 and not marker.exists():
        marker.write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    return pbt_quadratic(ctx)


def nan_for_member_1(ctx: Any) -> dict[str, float]:
    """T1, except member 1 always scores NaN: a broken setup that must stop, not loop."""
    result = pbt_quadratic(ctx)
    return {**result, "score": float("nan")} if ctx.member == 1 else result


def sleepy_noop(ctx: Any) -> float:
    """workers/noop.py, 20 ms slower: long enough that a worker killed at random holds a lease."""
    time.sleep(0.02)
    return noop(ctx)

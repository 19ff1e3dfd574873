"""The trainable contract: what one interval of training receives, and how hopt runs it.

A trainable is a Python callable `f(ctx) -> float | dict` or a shell command; it knows nothing of
the store or the policies. It resumes from `ctx.parent` (None for a fresh start), writes its new
checkpoint into `ctx.out`, and returns the score or a dict of metrics holding the objective metric.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _never() -> bool:
    return False


@dataclass(frozen=True)
class Context:
    """Everything a trainable gets for one interval."""

    hparams: dict[str, Any]
    parent: Path | None
    out: Path
    interval: int
    steps: int
    member: int
    seed: int
    should_stop: Callable[[], bool] = field(default=_never, compare=False)

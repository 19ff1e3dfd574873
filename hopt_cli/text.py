"""Wording that hopt's messages share."""
from __future__ import annotations

from typing import Any


def counted(number: int, noun: str) -> str:
    """`1 worker`, `2 workers`: a count with its noun, plural where it must be."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def shown(value: Any) -> str:
    """A value as a table or log line shows it: floats to 4 significant digits, None as `-`."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

"""Wording that hopt's messages share."""
from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """`1 worker`, `2 workers`: a count with its noun, plural where it must be."""
    return f"{number} {noun}{'' if number == 1 else 's'}"

"""What a policy decides for one member: the record policies return and journal events carry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    """A policy's choice for one member: where to resume from and with which coordinates."""

    action: str  # "start", "continue" or "exploit"
    parent: int | None  # member whose checkpoint is resumed; None for a fresh start
    checkpoint: str | None
    interval: int  # the interval to train next (a parent's, after an exploit)
    coords: tuple[float, ...]
    sigma: float
    last_change: int
    explorer: bool

    def to_dict(self) -> dict[str, Any]:
        """The decision as journal events carry it (a shallow copy: asdict's deep one cost 10% of a claim)."""
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        return cls(**{**data, "coords": tuple(data["coords"])})

"""Plain records derived from the journal: every commit, and every event in readable form.

Pure functions of the journal's events (no I/O), so notebooks, `hopt log` and `hopt plot` all read
the same history the workers wrote.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from hopt_cli import events
from hopt_cli.decision import Decision
from hopt_cli.events import JournalEvent


@dataclass(frozen=True)
class Commit:
    """One committed interval: who trained it, from which checkpoint, with what, and its score.

    `parent` is the member whose checkpoint this interval resumed: None on a fresh start, the member
    itself on a continue, another member on an exploit.
    """

    time: float
    member: int
    interval: int
    score: float
    hparams: dict[str, Any]
    action: str
    parent: int | None
    sigma: float
    explorer: bool
    worker: str
    checkpoint: str
    parent_checkpoint: str | None
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """One hyperparameter an exploit mutated: its value in the parent's checkpoint and the new one."""

    name: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Event:
    """One journal event as a reader wants it: what happened to which member interval, and why.

    `kind` is claim, commit, adopt, fail, release, reclaim or retry (which concerns no member);
    `worker` wrote the event, except for a reclaim: there it is the worker whose lease was dropped,
    and `by` the one that dropped it; `changes` lists an exploit's mutation (claims and commits);
    `reason` holds a failure's error or why a lease was released or reclaimed.
    """

    time: float
    kind: str
    member: int | None
    interval: int | None
    worker: str | None
    action: str | None = None
    parent: int | None = None
    score: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    changes: tuple[Change, ...] = ()
    reason: str | None = None
    by: str | None = None
    population: int | None = None  # an extend's new budget: members,
    intervals: int | None = None  # and intervals per member

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def commits(journal: Iterable[JournalEvent]) -> list[Commit]:
    """Every commit of the journal, in journal order."""
    return [_commit(e) for e in journal if isinstance(e, events.Commit)]


def _commit(event: events.Commit) -> Commit:
    d = event.decision
    return Commit(float(event.time or 0.0), event.member, event.interval, event.score, event.hparams, d.action,
                  d.parent, d.sigma, d.explorer, str(event.worker), event.checkpoint, d.checkpoint, event.metrics)


def readable(journal: Iterable[JournalEvent]) -> list[Event]:
    """Every journal event as an Event; exploits carry the diff against the parent's hyperparameters."""
    hparams_of: dict[str, dict[str, Any]] = {}
    records = []
    for e in journal:
        if isinstance(e, events.Commit):
            hparams_of[e.checkpoint] = e.hparams
        decision: Decision | None = getattr(e, "decision", None)
        hparams = getattr(e, "hparams", {})
        changes = _changes(hparams_of.get(str(decision.checkpoint)), hparams) \
            if decision is not None and decision.action == "exploit" else ()
        reclaim = isinstance(e, events.Reclaim)
        records.append(Event(
            time=float(e.time or 0.0), kind=e.kind, member=getattr(e, "member", None),
            interval=getattr(e, "interval", None), worker=e.holder if reclaim else e.worker,
            action=decision.action if decision else None, parent=decision.parent if decision else None,
            score=getattr(e, "score", None), hparams=hparams, changes=changes, reason=getattr(e, "reason", None),
            by=e.worker if reclaim else None, population=getattr(e, "population", None),
            intervals=getattr(e, "intervals", None) if isinstance(e, events.Extend) else None))
    return records


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[Change, ...]:
    old = old or {}
    return tuple(Change(name, old.get(name), value) for name, value in new.items() if old.get(name) != value)

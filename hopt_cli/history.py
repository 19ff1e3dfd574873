"""Plain records derived from the journal: every commit, and every event in readable form.

Pure functions of the journal's events (no I/O), so notebooks, `hopt log` and `hopt plot` all read
the same history the workers wrote.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    `changes` lists an exploit's mutation (claims and commits); `reason` holds a failure's error or
    why a lease was released or reclaimed.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def commits(events: list[dict[str, Any]]) -> list[Commit]:
    """Every commit of the journal, in journal order."""
    return [_commit(e) for e in events if e["type"] == "commit"]


def _commit(event: dict[str, Any]) -> Commit:
    decision = event["decision"]
    return Commit(event["time"], event["member"], event["interval"], event["score"], event["hparams"],
                  decision["action"], decision["parent"], decision["sigma"], decision["explorer"],
                  event["worker"], event["checkpoint"], decision["checkpoint"], event.get("metrics", {}))


def readable(events: list[dict[str, Any]]) -> list[Event]:
    """Every journal event as an Event; exploits carry the diff against the parent's hyperparameters."""
    hparams_of: dict[str, dict[str, Any]] = {}
    interval_of: dict[str, int] = {}
    records = []
    for e in events:
        kind = e["type"]
        if kind == "claim":
            interval_of[e["token"]] = e["interval"]
        if kind == "commit":
            hparams_of[e["checkpoint"]] = e["hparams"]
        decision = e.get("decision", {})
        changes = _changes(hparams_of.get(decision.get("checkpoint")), e["hparams"]) \
            if decision.get("action") == "exploit" else ()
        records.append(Event(
            time=e["time"], kind=kind, member=e.get("member"), interval=e.get("interval", interval_of.get(e.get("token"))),
            worker=e.get("worker", e.get("holder")), action=decision.get("action"), parent=decision.get("parent"),
            score=e.get("score"), hparams=e.get("hparams", {}), changes=changes,
            reason=e.get("error", e.get("reason"))))
    return records


def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[Change, ...]:
    old = old or {}
    return tuple(Change(name, old.get(name), value) for name, value in new.items() if old.get(name) != value)

"""Journal events as typed records: the one place that knows their kinds and keys, written and read.

Workers append them through the store, the population applies them, the simulator and `hopt log`
read them; all of them see these records, never the raw JSON. `encode` gives the object a journal line
holds (the journal adds its own `seq` and `prev`); `decode` reads one back. Every event names the
worker that wrote it (`worker`) and why a lease ended (`reason`). Journals of experiment format 1
wrote a fail's reason as `error` and a reclaim's writer as `by`: `decode` reads those too.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from hopt_cli.decision import Decision

REASON_LIMIT = 2000  # characters of a failure's error a fail event keeps (its tail)


@dataclass(frozen=True, kw_only=True, slots=True)
class JournalEvent:
    """What every event holds: the worker that wrote it, and when (its clock; set as it is appended)."""

    kind: ClassVar[str]
    worker: str | None = None
    time: float | None = None

    def at(self, time: float) -> JournalEvent:
        """This event stamped with the time it is appended."""
        return replace(self, time=time)


@dataclass(frozen=True, kw_only=True, slots=True)
class Decided(JournalEvent):
    """An event that carries a policy's decision for a member; its interval is the decision's."""

    member: int
    token: str  # of the claim (a commit's is its claim's): it fences the lease
    decision: Decision
    hparams: dict[str, Any]

    @property
    def interval(self) -> int:
        return self.decision.interval


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim(Decided):
    """A worker takes a member to train its next interval, as `decision` says."""

    kind: ClassVar[str] = "claim"
    attempt: int = 0  # claims of this interval before (failed or reclaimed)
    host: str | None = None
    pid: int | None = None
    pidns: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Commit(Decided):
    """A trained interval: its checkpoint and score, everything needed to replay its decision, the
    thread settings it was trained with (None: not recorded), which a replay needs for the same floats,
    and the checkpoint's content digest (store/digest.py; None: written before hopt recorded it)."""

    kind: ClassVar[str] = "commit"
    checkpoint: str
    score: float
    metrics: dict[str, Any] = field(default_factory=dict)
    threads: dict[str, str] | None = None
    digest: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Adopt(Decided):
    """A member takes over a finished lineage whole (an exploit with nothing left to train)."""

    kind: ClassVar[str] = "adopt"
    checkpoint: str
    score: float


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseEnd(JournalEvent):
    """A claim that ended without a commit, and why."""

    member: int
    interval: int
    token: str | None
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Fail(LeaseEnd):
    """An interval that failed; `reason` is the tail of its error."""

    kind: ClassVar[str] = "fail"


@dataclass(frozen=True, kw_only=True, slots=True)
class Release(LeaseEnd):
    """A member given back untrained by its own worker (a stop request, a discarded interval)."""

    kind: ClassVar[str] = "release"


@dataclass(frozen=True, kw_only=True, slots=True)
class Reclaim(LeaseEnd):
    """A claim ended by another worker (`worker`) because its holder (`holder`, if known) went silent."""

    kind: ClassVar[str] = "reclaim"
    holder: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Retry(JournalEvent):
    """The user fixed what failed: every member gets its full budget of failures again."""

    kind: ClassVar[str] = "retry"


@dataclass(frozen=True, kw_only=True, slots=True)
class Extend(JournalEvent):
    """The user grew the experiment (`hopt extend`): the budget is now `population` members of
    `intervals` intervals each; experiment.yaml keeps the size it was created with."""

    kind: ClassVar[str] = "extend"
    population: int
    intervals: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Stop(JournalEvent):
    """A stop rule of the recipe was reached (`reason` says which, and how): workers stop at their next
    claim, until a `hopt extend` resumes the experiment."""

    kind: ClassVar[str] = "stop"
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Set(JournalEvent):
    """The user changed operational settings (`hopt set`): dotted recipe keys and their new values,
    in force from this event on; experiment.yaml keeps the values it was created with."""

    kind: ClassVar[str] = "set"
    settings: dict[str, Any]


KINDS: dict[str, type[JournalEvent]] = {k.kind: k for k in (Claim, Commit, Adopt, Fail, Release, Reclaim, Retry,
                                                             Extend, Stop, Set)}
_KEYS = {kind: tuple(f.name for f in fields(kind)) for kind in KINDS.values()}
_FORMAT_1_KEYS = {Fail: {"error": "reason"}, Reclaim: {"by": "worker"}}


def fail(member: int, interval: int, token: str, error: str, worker: str) -> Fail:
    """A failed interval, keeping the error's tail only (its last lines say what went wrong)."""
    return Fail(member=member, interval=interval, token=token, reason=error[-REASON_LIMIT:], worker=worker)


def encode(event: JournalEvent) -> dict[str, Any]:
    """The JSON object of a journal line: `type`, the member and interval first, unset fields left out."""
    data: dict[str, Any] = {"type": event.kind}
    if isinstance(event, (Decided, LeaseEnd)):
        data["member"], data["interval"] = event.member, event.interval
    for name in _KEYS[type(event)]:
        value = getattr(event, name)
        if value is None or name in data:
            continue
        if name == "decision":
            value = value.to_dict()
        elif name == "metrics":
            value = finite_metrics(value)
        data[name] = value
    return data


def decode(data: Mapping[str, Any]) -> JournalEvent:
    """The typed event a journal line's object holds; ValueError saying what is wrong if it holds none."""
    kind = KINDS.get(data.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise ValueError(f"unknown event type {data.get('type')!r} (written by a newer hopt? upgrade hopt)")
    values = {name: data[name] for name in _KEYS[kind] if name in data}
    for old, new in _FORMAT_1_KEYS.get(kind, {}).items():
        if old in data and new not in values:
            values[new] = data[old]
    try:
        if "decision" in values:
            values["decision"] = Decision.from_dict(values["decision"])
        return kind(**values)
    except TypeError as err:
        raise ValueError(f"not a valid {kind.kind} event ({err})") from None


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics safe for strict JSON: non-finite floats become None, other non-numbers are dropped.

    The trainable's values arrive as Python scalars already (trainable.scalar_metrics)."""
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or isinstance(value, str):
            clean[str(key)] = value
        elif isinstance(value, (int, float)):
            clean[str(key)] = float(value) if math.isfinite(value) else None
    return clean

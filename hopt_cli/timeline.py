"""The journal read once for its readers: every record that history, `hopt log`, interval logs and the
TensorBoard export want comes from one replay of the events, each kind read in one place (`READERS`).

Pure (no I/O): feed a `Timeline` the events in journal order, as often as new ones arrive. An exploit's
diff against the checkpoint it resumes is computed here, once, for every reader. The population's own
state machine (population.py) is the other reader of events: it holds what workers decide on.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from hopt_cli import events
from hopt_cli.events import JournalEvent
from hopt_cli.text import shown


@dataclass(frozen=True)
class TrainedInterval:
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

    `kind` is an event kind of hopt_cli/events.py (docs/json-schemas.md lists them); `worker` wrote the
    event, except for a reclaim: there it is the worker whose lease was dropped, and `by` the one that
    dropped it; `changes` lists an exploit's mutation (claims and commits); `reason` holds a failure's
    error, why a lease was released or reclaimed, or which stop rule stopped the experiment.
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
    settings: dict[str, Any] | None = None  # what a `hopt set` changed: dotted recipe key -> value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Attempt:
    """One claim of a member interval and how it ended: committed, failed, released, reclaimed, or
    training (no end in the journal yet); `token` names its checkpoint and interval log."""

    member: int
    interval: int
    attempt: int
    worker: str | None
    token: str
    outcome: str
    reason: str | None


@dataclass(frozen=True)
class Replayed:
    """One journal event with what its readers want: its readable `entry`, the interval it `trained`
    (commits), and the commit whose checkpoint it resumes or takes over (`copied`: exploits and adopts;
    None when the journal holds no such commit)."""

    event: JournalEvent
    entry: Event
    trained: TrainedInterval | None = None
    copied: TrainedInterval | None = None


class Timeline:
    """The journal replayed so far; `extend` it with the events that follow, in journal order."""

    def __init__(self) -> None:
        self.replayed: list[Replayed] = []
        self._made: dict[str, TrainedInterval] = {}  # checkpoint -> the commit that made it
        self._claims: dict[tuple[int, int], list[events.Claim]] = {}  # (member, interval) -> its claims
        self._ends: dict[str | None, events.Commit | events.LeaseEnd] = {}  # claim token -> how that claim ended
        self._stopped = False  # a stop rule stopped the experiment, and no extend resumed it yet

    def extend(self, found: Iterable[JournalEvent]) -> None:
        """Read the events that follow the ones read so far."""
        for event in found:
            self.replayed.append(READERS[type(event)].read(self, event))

    @property
    def entries(self) -> list[Event]:
        """Every event so far as a readable record."""
        return [r.entry for r in self.replayed]

    @property
    def commits(self) -> list[TrainedInterval]:
        """Every committed interval so far, in journal order."""
        return [r.trained for r in self.replayed if r.trained is not None]

    def attempts(self, member: int, interval: int) -> list[Attempt]:
        """Every claim of `member`'s `interval`, in journal order, with how it ended."""
        attempts = []
        for claim in self._claims.get((member, interval), []):
            end = self._ends.get(claim.token)
            attempts.append(Attempt(member, interval, claim.attempt, claim.worker, claim.token,
                                    "training" if end is None else _OUTCOMES[type(end)], getattr(end, "reason", None)))
        return attempts

    def _decided(self, e: events.Decided, **more: Any) -> Replayed:
        """A claim's, commit's or adopt's record; an exploit's carries its diff against the copied checkpoint."""
        d = e.decision
        copied = self._made.get(str(d.checkpoint)) if d.action == "exploit" else None
        changes = _changes(copied.hparams if copied else None, e.hparams) if d.action == "exploit" else ()
        entry = Event(float(e.time or 0.0), e.kind, e.member, e.interval, e.worker, d.action, d.parent,
                      getattr(e, "score", None), e.hparams, changes)
        return Replayed(e, entry, copied=copied, **more)

    def _claim(self, e: events.Claim) -> Replayed:
        self._claims.setdefault((e.member, e.interval), []).append(e)
        return self._decided(e)

    def _commit(self, e: events.Commit) -> Replayed:
        d = e.decision
        trained = TrainedInterval(float(e.time or 0.0), e.member, e.interval, e.score, e.hparams, d.action, d.parent,
                                  d.sigma, d.explorer, str(e.worker), e.checkpoint, d.checkpoint, e.metrics)
        self._made[e.checkpoint] = trained
        self._ends[e.token] = e
        return self._decided(e, trained=trained)

    def _adopt(self, e: events.Adopt) -> Replayed:
        return Replayed(e, self._decided(e).entry, copied=self._made.get(e.checkpoint))

    def _lease_end(self, e: events.LeaseEnd) -> Replayed:
        self._ends[e.token] = e
        return Replayed(e, Event(float(e.time or 0.0), e.kind, e.member, e.interval, e.worker, reason=e.reason))

    def _reclaim(self, e: events.Reclaim) -> Replayed:
        """Its writer (`by`) dropped the lease of `holder`, the worker the entry names."""
        self._ends[e.token] = e
        return Replayed(e, Event(float(e.time or 0.0), e.kind, e.member, e.interval, e.holder, reason=e.reason,
                                 by=e.worker))

    def _retry(self, e: events.Retry) -> Replayed:
        return Replayed(e, Event(float(e.time or 0.0), e.kind, None, None, e.worker))

    def _extend(self, e: events.Extend) -> Replayed:
        resumed, self._stopped = self._stopped, False
        return Replayed(e, Event(float(e.time or 0.0), e.kind, None, None, e.worker, population=e.population,
                                 intervals=e.intervals, reason="resumed after a stop" if resumed else None))


    def _stop(self, e: events.Stop) -> Replayed:
        self._stopped = True
        return Replayed(e, Event(float(e.time or 0.0), e.kind, None, None, e.worker, reason=e.reason))

    def _set(self, e: events.Set) -> Replayed:
        return Replayed(e, Event(float(e.time or 0.0), e.kind, None, None, e.worker, settings=dict(e.settings)))


def describe(e: Event) -> str:
    """The event in words, as `hopt log` prints it after its time, worker and kind."""
    return READERS[events.KINDS[e.kind]].text(e)


def _claim_text(e: Event) -> str:
    if e.action == "exploit":
        changes = ", ".join(f"{c.name} {shown(c.old)} \u2192 {shown(c.new)}" for c in e.changes) or "no change"
        return f"member {e.member} \u2190 member {e.parent} (interval {e.interval}): {changes}"
    params = " ".join(f"{k}={shown(v)}" for k, v in e.hparams.items())
    return f"{_where(e)}: {e.action}" + (f" {params}" if e.action == "start" else "")


def _commit_text(e: Event) -> str:
    copied = f" (exploit of member {e.parent})" if e.action == "exploit" else ""
    return f"{_where(e)}: score {shown(e.score)}{copied}"


def _adopt_text(e: Event) -> str:
    return f"member {e.member} takes over member {e.parent}'s finished lineage (score {shown(e.score)})"


def _fail_text(e: Event) -> str:
    return f"{_where(e)} FAILED: {e.reason}"


def _release_text(e: Event) -> str:
    return f"{_where(e)}: {e.reason}"


def _reclaim_text(e: Event) -> str:
    return f"{_where(e)}: lease of {e.worker} dropped" + (f" by {e.by}" if e.by else "") + f": {e.reason}"


def _retry_text(e: Event) -> str:
    return "failure counts cleared by `hopt retry`: every member may fail max_failures times again"


def _extend_text(e: Event) -> str:
    if e.reason:
        return f"resumed after its stop by `hopt extend`, at {e.population} members x {e.intervals} intervals"
    return f"grown by `hopt extend` to {e.population} members x {e.intervals} intervals"


def _stop_text(e: Event) -> str:
    return f"stopped: {e.reason}; `hopt extend` resumes it"


def _set_text(e: Event) -> str:
    return "changed by `hopt set`: " + " ".join(f"{k}={'null' if v is None else shown(v)}"
                                                for k, v in (e.settings or {}).items())


def _where(e: Event) -> str:
    return f"member {e.member} interval {e.interval}"



def _changes(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[Change, ...]:
    old = old or {}
    return tuple(Change(name, old.get(name), value) for name, value in new.items() if old.get(name) != value)


_OUTCOMES = {events.Commit: "committed", events.Fail: "failed", events.Release: "released", events.Reclaim: "reclaimed"}


@dataclass(frozen=True)
class Reader:
    """An event kind's one reader: how the replay reads it, and how `hopt log` words it."""

    read: Callable[[Timeline, Any], Replayed]
    text: Callable[[Event], str]


READERS: dict[type[JournalEvent], Reader] = {
    events.Claim: Reader(Timeline._claim, _claim_text),
    events.Commit: Reader(Timeline._commit, _commit_text),
    events.Adopt: Reader(Timeline._adopt, _adopt_text),
    events.Fail: Reader(Timeline._lease_end, _fail_text),
    events.Release: Reader(Timeline._lease_end, _release_text),
    events.Reclaim: Reader(Timeline._reclaim, _reclaim_text),
    events.Retry: Reader(Timeline._retry, _retry_text),
    events.Extend: Reader(Timeline._extend, _extend_text),
    events.Stop: Reader(Timeline._stop, _stop_text),
    events.Set: Reader(Timeline._set, _set_text),
}

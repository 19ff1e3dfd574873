"""The population as a pure state machine over journal events, and the read-only views policies get.

Every worker, the snapshot and the simulator build the same state by applying the same events in
journal order; nothing here does I/O, so the state after any prefix of the journal is reproducible.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hopt_cli.decision import Decision
from hopt_cli.events import (Adopt, Claim, Commit, Extend, Fail, JournalEvent, LeaseEnd, Reclaim, Release, Retry, Set,
                             Stop)

PROGRESS_WINDOW = 2  # commits per member of recent progress the population keeps for the ETA


@dataclass(frozen=True)
class MemberView:
    """One member as a policy sees it: scores along its lineage, higher is better."""

    member: int
    interval: int
    scores: tuple[float, ...]
    coords: tuple[float, ...]
    sigma: float
    last_change: int
    explorer: bool
    checkpoint: str | None

    def score_at(self, t: int) -> float:
        """Score after `t` intervals of training time, or the latest before if the lineage is shorter."""
        return self.scores[min(t, len(self.scores)) - 1]

    def robust_at(self, t: int, window: int) -> float:
        """Mean of the lineage's last `window` scores up to training time `t`."""
        return robust_score(self.scores[:t], window)


def robust_score(scores: Sequence[float], window: int) -> float:
    """ROMUL's robust score (step 4): the mean of the last `window` scores."""
    recent = scores[-window:]
    return sum(recent) / len(recent)


@dataclass(frozen=True)
class PopulationView:
    """Read-only population handed to a policy."""

    members: tuple[MemberView, ...]
    intervals: int

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class Segment:
    """A run of intervals a lineage trained with one hyperparameter setting by one member.

    Frozen, and never changed after it is appended: lineages copied from one another share them.
    """

    start: int
    member: int
    hparams: dict[str, Any]
    copied_from: int | None = None  # member whose checkpoint this segment continued, after an exploit
    parent_checkpoint: str | None = None
    threads: dict[str, str] | None = None  # the thread settings it was trained with; None: not recorded


@dataclass
class Lineage:
    """A lineage's scores (raw objective, by interval) and its hyperparameter schedule."""

    scores: list[float] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    def copy(self) -> Lineage:
        """An independent lineage sharing the (immutable) scores and segments: O(length), not a deep copy."""
        return Lineage(list(self.scores), list(self.segments))


@dataclass(frozen=True)
class Claimer:
    """Who made a member's latest claim, as its event recorded it; `pid` is None in events of workers that
    did not record their process."""

    worker: str
    host: str | None = None
    pid: int | None = None
    pidns: int | None = None


@dataclass
class MemberState:
    member: int
    interval: int = 0
    checkpoint: str | None = None
    digest: str | None = None  # the checkpoint's content digest its commit recorded (None: not recorded)
    coords: list[float] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    sigma: float = 0.0
    last_change: int = 0
    explorer: bool = False
    lineage: Lineage = field(default_factory=Lineage)
    metrics: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    claims: int = 0
    last_error: str | None = None
    token: str | None = None  # of the latest claim; only its lease may end it
    claim_open: bool = False  # the latest claim has not ended yet (its staging folder is in use)
    claim_parent: str | None = None  # the checkpoint the open claim resumes from
    claim_time: float | None = None  # when its writer made the latest claim (its clock)
    claim_holder: Claimer | None = None  # who made it
    committed: int = -1  # the number of the event that committed its latest interval (-1: none)


@dataclass
class BestEntry:
    """One of the `keep_best` best commits ever, kept whole so it can be exported after it is overtaken."""

    score: float
    checkpoint: str
    member: int
    interval: int
    hparams: dict[str, Any]
    metrics: dict[str, Any]
    lineage: Lineage
    digest: str | None = None  # the checkpoint's content digest its commit recorded (None: not recorded)


@dataclass
class Population:
    """The state every worker agrees on, derived from the journal alone."""

    size: int
    intervals: int
    maximize: bool = True
    keep_best: int = 3
    max_failures: int = 3
    members: list[MemberState] = field(default_factory=list)
    pending: dict[int, Lineage] = field(default_factory=dict)
    best: list[BestEntry] = field(default_factory=list)
    failed: str | None = None
    events: int = 0
    intervals_done: int = 0
    started: float | None = None  # time of the first event
    progress: list[tuple[float, int]] = field(default_factory=list)  # (time, intervals done), recent only
    stopped: str | None = None  # why a stop rule stopped the experiment (None: it runs)
    resumed: float | None = None  # time of the `hopt extend` that resumed it after a stop: the rules count from it
    resumed_event: int = 0  # that extend's event number: a metric rule looks at commits after it only
    settings: dict[str, Any] = field(default_factory=dict)  # what `hopt set` changed: dotted recipe key -> value

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [MemberState(m) for m in range(self.size)]
        self._views: dict[int, MemberView] = {}
        self._view: PopulationView | None = None  # only commits change what policies see

    @property
    def budget(self) -> int:
        """Intervals to train in all: every member's."""
        return self.size * self.intervals

    @property
    def complete(self) -> bool:
        return all(m.interval >= self.intervals for m in self.members)

    def normalized(self, score: float) -> float:
        """The objective turned so that higher is better."""
        return score if self.maximize else -score

    def view(self) -> PopulationView:
        if self._view is None:
            self._view = PopulationView(tuple(self._member_view(m) for m in self.members), self.intervals)
        return self._view

    def _member_view(self, state: MemberState) -> MemberView:
        cached = self._views.get(state.member)
        if cached is None:
            cached = MemberView(
                member=state.member,
                interval=state.interval,
                scores=tuple(state.lineage.scores) if self.maximize else tuple(-s for s in state.lineage.scores),
                coords=tuple(state.coords),
                sigma=state.sigma,
                last_change=state.last_change,
                explorer=state.explorer,
                checkpoint=state.checkpoint,
            )
            self._views[state.member] = cached
        return cached

    def next_member(self, leased: set[int]) -> int | None:
        """The free, unfinished member with the fewest intervals (lowest index on ties)."""
        free = [m for m in self.members if m.member not in leased and m.interval < self.intervals]
        return min(free, key=lambda m: (m.interval, m.member)).member if free else None

    def referenced_checkpoints(self) -> set[str]:
        """Checkpoints a member, an open claim or the best-so-far list points at."""
        names = {m.checkpoint for m in self.members if m.checkpoint}
        names |= {m.claim_parent for m in self.members if m.claim_open and m.claim_parent}
        return names | {b.checkpoint for b in self.best}

    def claimed(self) -> set[int]:
        """Members whose latest claim has not ended: a worker trains them (or its lease is not reclaimed yet)."""
        return {m.member for m in self.members if m.claim_open}

    def open_claims(self) -> set[str]:
        """The tokens of claims that have not ended: their staging folders are in use."""
        return {str(m.token) for m in self.members if m.claim_open}

    def apply(self, event: JournalEvent) -> None:
        """Advance the state by one journal event."""
        if self.started is None and event.time is not None:
            self.started = event.time
            self.progress.append((self.started, 0))
        handler = _HANDLERS.get(type(event))  # none for a kind that changes no state, only what readers see
        if handler is not None:
            handler(self, event)
        self.events += 1

    def _record_progress(self, event: Commit | Adopt) -> None:
        """Keep (time, intervals done) after the last PROGRESS_WINDOW x size commits: a status's ETA
        extrapolates them without reading the journal."""
        if event.time is not None:
            self.progress.append((event.time, self.intervals_done))
            excess = len(self.progress) - PROGRESS_WINDOW * self.size - 1
            if excess > 0:
                del self.progress[:excess]

    def _current(self, event: Commit | LeaseEnd) -> MemberState | None:
        """The member an end-of-lease event is about, or None if a later claim superseded its lease.

        Under the lock that never happens; if a lock ever fails and two workers claim the same member,
        the journal's order settles it: only the latest claim's commit, failure or release counts.
        """
        member = self.members[event.member]
        return member if event.token == member.token else None

    def _on_claim(self, event: Claim) -> None:
        member = self.members[event.member]
        member.claims += 1
        member.token = event.token
        decision = event.decision
        member.claim_open, member.claim_parent = True, decision.checkpoint
        member.claim_time = event.time
        member.claim_holder = Claimer(event.worker, event.host, event.pid, event.pidns)
        if member.checkpoint is None:  # nothing committed yet: show what its first interval trains with
            member.hparams, member.sigma = dict(event.hparams), decision.sigma
        if decision.action == "exploit":
            self.pending[member.member] = self.members[int(decision.parent)].lineage.copy()
        else:
            self.pending.pop(member.member, None)

    def _on_commit(self, event: Commit) -> None:
        member = self._current(event)
        if member is None:
            return
        decision = event.decision
        lineage = self.pending.pop(member.member, None) if decision.action == "exploit" else None
        if lineage is not None:
            member.lineage = lineage
        elif decision.action == "start":
            member.lineage = Lineage()
        if len(member.lineage.scores) != decision.interval:
            raise ValueError(f"commit of member {member.member} interval {decision.interval} does not follow "
                             f"its lineage of {len(member.lineage.scores)} intervals")
        hparams = event.hparams
        _extend_schedule(member.lineage, decision, member.member, hparams, event.threads)
        member.lineage.scores.append(event.score)
        self.intervals_done += min(decision.interval + 1, self.intervals) - min(member.interval, self.intervals)
        member.interval = decision.interval + 1
        member.checkpoint, member.digest = event.checkpoint, event.digest
        member.coords = list(decision.coords)
        member.hparams = hparams
        member.sigma = decision.sigma
        member.last_change = decision.last_change
        member.explorer = decision.explorer
        member.metrics = event.metrics
        member.failures = member.claims = 0
        member.last_error = None
        member.claim_open, member.claim_parent = False, None
        member.committed = self.events
        self._views.pop(member.member, None)
        self._view = None
        self._record_best(member)
        self._record_progress(event)

    def _on_adopt(self, event: Adopt) -> None:
        """The member takes over a finished lineage whole (there is nothing left of it to train)."""
        member = self.members[event.member]
        parent = self.members[int(event.decision.parent)]
        self.intervals_done += min(parent.interval, self.intervals) - min(member.interval, self.intervals)
        for name in ("interval", "checkpoint", "digest", "coords", "hparams", "sigma", "last_change", "metrics",
                     "committed"):
            setattr(member, name, getattr(parent, name))
        member.lineage = parent.lineage.copy()
        member.token = event.token
        member.failures = member.claims = 0
        member.last_error = None
        member.claim_open, member.claim_parent = False, None
        self.pending.pop(member.member, None)
        self._views.pop(member.member, None)
        self._view = None
        self._record_progress(event)

    def _on_fail(self, event: Fail) -> None:
        member = self._current(event)
        if member is None:
            return
        self.pending.pop(member.member, None)
        member.claim_open, member.claim_parent = False, None
        member.failures += 1
        member.last_error = event.reason
        if member.failures >= self.max_failures and self.failed is None:
            self.failed = (f"member {member.member} failed {member.failures} times in a row; last error: "
                           f"{event.reason}; once that is fixed, run `hopt retry` on the experiment and start "
                           "the workers again")

    def _on_retry(self, event: Retry) -> None:
        """The user fixed what failed: every member gets its full budget of failures again."""
        for member in self.members:
            member.failures = 0
        self.failed = None

    def _on_extend(self, event: Extend) -> None:
        """A bigger budget: finished members go on, new members start as the first ones did."""
        if event.population < self.size or event.intervals < self.intervals:
            raise ValueError(f"an extend to {event.population} members x {event.intervals} intervals would shrink "
                             f"the experiment of {self.size} x {self.intervals}")
        self.members.extend(MemberState(m) for m in range(self.size, event.population))
        self.size, self.intervals = event.population, event.intervals
        self._view = None
        if self.stopped is not None:  # the extend resumes a stopped experiment; its stop rules count from here
            self.stopped, self.resumed, self.resumed_event = None, event.time, self.events

    def _on_stop(self, event: Stop) -> None:
        """A stop rule was reached: no more claims until an extend resumes (the first reason stands)."""
        if self.stopped is None:
            self.stopped = event.reason

    def _on_set(self, event: Set) -> None:
        """`hopt set`: the settings from now on; the ones the population itself applies take effect here."""
        for key, value in event.settings.items():  # later changes apply after earlier ones; a whole section
            for old in [k for k in self.settings if k == key or k.startswith(f"{key}.")]:  # replaces its keys
                del self.settings[old]
            self.settings[key] = value
        self.max_failures = int(event.settings.get("max_failures", self.max_failures))
        if "keep_best" in event.settings:
            self.keep_best = int(event.settings["keep_best"])
            del self.best[self.keep_best:]  # the dropped entries' checkpoints are collected as garbage

    def _on_end_of_lease(self, event: LeaseEnd) -> None:
        member = self._current(event)
        if member is not None:
            self.pending.pop(event.member, None)
            member.claim_open, member.claim_parent = False, None

    def _record_best(self, member: MemberState) -> None:
        score = member.lineage.scores[-1]
        if len(self.best) >= self.keep_best and self.normalized(score) <= self.normalized(self.best[-1].score):
            return
        self.best.append(BestEntry(score, member.checkpoint, member.member, member.interval - 1,
                                   dict(member.hparams), dict(member.metrics), member.lineage.copy(), member.digest))
        self.best.sort(key=lambda b: -self.normalized(b.score))
        del self.best[self.keep_best:]


_HANDLERS = {
    Claim: Population._on_claim,
    Commit: Population._on_commit,
    Adopt: Population._on_adopt,
    Fail: Population._on_fail,
    Release: Population._on_end_of_lease,
    Reclaim: Population._on_end_of_lease,
    Retry: Population._on_retry,
    Extend: Population._on_extend,
    Stop: Population._on_stop,
    Set: Population._on_set,
}


def _extend_schedule(lineage: Lineage, decision: Decision, member: int, hparams: dict[str, Any],
                     threads: dict[str, str] | None) -> None:
    last = lineage.segments[-1] if lineage.segments else None
    if (decision.action != "exploit" and last is not None
            and (last.member, last.hparams, last.threads) == (member, hparams, threads)):
        return
    copied = decision.parent if decision.action == "exploit" else None
    lineage.segments.append(Segment(decision.interval, member, dict(hparams), copied,
                                    decision.checkpoint if copied is not None else None, threads))

"""The store: the experiment directory protocol of DESIGN.md, and all of hopt's I/O on it.

Claims and commits run inside `transaction()`: the lock is held, a torn journal tail is cut, and the
in-memory population has caught up with the journal. The store never decides anything; it records
what the worker loop decided and keeps every invariant of the directory. It keeps the transaction and
the journaled operations; its parts own the rest: `replica` (sync, snapshot, reading events), `appends`
(our events, read back), `leases` (the lease table, the only judge of staleness), `collector` (every
deletion) and `staging` (the folders intervals train into, published as checkpoints).
"""
from __future__ import annotations

import contextlib
import enum
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from hopt_cli import events, stopping
from hopt_cli.decision import Decision
from hopt_cli.errors import CorruptFile, ExperimentFailed, HoptError, RecipeError, command
from hopt_cli.events import Adopt, Claim, Commit, Extend, JournalEvent, Release, Retry, Set, Stop
from hopt_cli.population import Population
from hopt_cli.recipe import FORMAT, Recipe
from hopt_cli.settings import SECTIONS, SETTABLE, overlay
from hopt_cli.store.appends import Appends
from hopt_cli.store.collector import Collector
from hopt_cli.store.fsio import create_exclusive, touch, write_atomic
from hopt_cli.store.journal import Cursor, Journal
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.store.leasetable import LeaseInfo, LeaseTable
from hopt_cli.store.locking import make_lock
from hopt_cli.store.paths import ExperimentPaths, checkpoint_name
from hopt_cli.store.replica import Replica
from hopt_cli.store.staging import Staging

__all__ = ["Claimed", "LeaseInfo", "NoClaim", "Store"]

RETRY_WORKER = "hopt-retry"  # who a retry event names: the user, through `hopt retry`
EXTEND_WORKER = "hopt-extend"  # and an extend event: the user, through `hopt extend`
SET_WORKER = "hopt-set"  # and a set event: the user, through `hopt set`

log = logging.getLogger("hopt")


class NoClaim(enum.Enum):
    """Why an attempt to claim gave no claim, and so what the worker does next."""

    COMPLETE = "done"  # nothing is left to train: stop
    BUSY = "busy"  # every unfinished member is being trained: wait, then try again
    AGAIN = "again"  # an adoption, or a claim made on a stale view: try again at once
    STOPPED = "stopped"  # a stop rule of the recipe was reached (stopping.py): stop


@dataclass(frozen=True)
class Claimed:
    """A member claimed for one interval: its lease, and the decision and hyperparameters it trains with."""

    lease: Lease
    decision: Decision
    hparams: dict[str, Any]

    @property
    def member(self) -> int:
        return self.lease.member


class Choice(Protocol):
    """What the worker's planner decided for the next member (planning.Plan): the store only records it."""

    @property
    def member(self) -> int: ...
    @property
    def decision(self) -> Decision: ...
    @property
    def hparams(self) -> dict[str, Any]: ...
    @property
    def adopt(self) -> bool: ...


Planner = Callable[[Population, set[int]], Choice | None]  # (population, leased members) -> the next choice


class Store:
    """One experiment directory, opened by one process."""

    def __init__(self, root: Path, recipe: Recipe, format: int = FORMAT) -> None:
        self.paths = ExperimentPaths(root)
        self.recipe = recipe  # in force: experiment.yaml's, with what `hopt set` changed as of the last sync
        self.created = recipe  # experiment.yaml's
        self._settings: dict[str, Any] = {}  # the population's settings self.recipe holds
        self.format = format  # of experiment.yaml: one older than FORMAT is read, never written
        self.journal = Journal(self.paths.journal)
        self.lock = make_lock(recipe.lock, self.paths)
        self.replica = Replica(self.paths, self.journal, lambda: _empty_population(recipe))
        self.appends = Appends(self.journal, self.replica, recipe.lock)
        self.leases = LeaseTable(self.paths, recipe.lease, self.replica, self.appends.append_while)
        self.collector = Collector(self.paths, recipe.lease, self.lock.timeout, self.replica, self.leases)
        self.staging = Staging(self.paths)
        self._after_lock: list[Callable[[], None]] = []  # a transaction's filesystem work that needs no lock

    @property
    def population(self) -> Population:
        """The population as last read (see `sync`)."""
        return self.replica.population

    @property
    def cursor(self) -> Cursor:
        """How far into the journal the population has read."""
        return self.replica.cursor

    @classmethod
    def create(cls, root: str | Path, recipe: Recipe) -> Store:
        """Create the experiment, or open it if it holds the same recipe; safe for many at once."""
        root = Path(root)
        text = yaml.safe_dump(recipe.to_dict(), sort_keys=False).encode()
        try:
            root.mkdir(parents=True, exist_ok=True)
            created = create_exclusive(ExperimentPaths(root).experiment, text)
        except OSError as err:
            raise HoptError(f"cannot create the experiment in {root}: {err.strerror}; "
                            "choose a --dir you can write to") from None
        store = cls.open(root)
        store.check_writable()
        if not created and store.recipe.to_dict() != recipe.to_dict():
            store._check_same(recipe)
        return store

    def _check_same(self, recipe: Recipe) -> None:
        """Refuse a recipe that is neither this experiment's nor that one grown as `hopt extend` grew it."""
        population = self.sync()
        mine = {**self.recipe.to_dict(), "population": population.size, "intervals": population.intervals}
        key = _first_difference(mine, recipe.to_dict())
        if key == "the top level":
            return
        root = self.paths.root
        if key == "project":
            raise HoptError(f"{root} was created to run its trainable in {self.recipe.project}, not the "
                            f"recipe's project {recipe.project}; drop project from the recipe, or use another --dir")
        grow = (f"; to grow it, run `{command('hopt', 'extend', '--dir', root, f'--{key}', 'N')}`"
                if key in ("population", "intervals") else
                f"; to change it, run `{command('hopt', 'set', '--dir', root, f'{key}=VALUE')}`"
                if key in SETTABLE or key in SECTIONS else "")
        raise HoptError(f"{root} already holds a different experiment (recipe differs at {key}){grow}; "
                        "use another --dir, or the recipe it was created with")

    @classmethod
    def open(cls, root: str | Path) -> Store:
        """Open an existing experiment directory."""
        root = Path(root)
        paths = ExperimentPaths(root)
        if not paths.experiment.is_file():
            raise HoptError(f"{root} is not a hopt experiment (no experiment.yaml); "
                            f"create one with `{command('hopt', 'init', 'RECIPE', '--dir', root)}`")
        try:
            data = yaml.safe_load(paths.experiment.read_text())
            recipe = Recipe.from_dict(data, stored=True)
        except (RecipeError, yaml.YAMLError) as err:
            raise CorruptFile(paths.experiment, f"not a valid resolved recipe ({err})",
                              "restore it, or start the experiment again in a new --dir") from None
        store = cls(root, recipe, data.get("format", FORMAT))
        store._ensure_layout()
        return store

    def _ensure_layout(self) -> None:
        if not self.paths.journal.exists() and (self.paths.state.exists() or _any_entry(self.paths.checkpoints)):
            raise CorruptFile(self.paths.journal, "is missing, but state.json or checkpoints show the experiment ran",
                              "restore it from a backup (hopt will not start this experiment over on its own), "
                              "or start again in a new --dir")
        try:
            for folder in self.paths.folders:
                if not folder.is_dir():
                    folder.mkdir(exist_ok=True)
            for path in (self.paths.lock, self.paths.journal, self.paths.clock):
                if not path.exists():
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        except OSError as err:
            raise HoptError(f"cannot set up {self.paths.root}: {err.strerror}; "
                            "check the directory's permissions") from None

    def check_writable(self) -> None:
        """Refuse to write to an experiment of an older format: its own hopt's workers, still running
        on it perhaps, could not read our events (a fail's error is its `reason` now)."""
        if self.format != FORMAT:
            raise HoptError(f"{self.paths.root} is an experiment of format {self.format}, made by hopt 0.1, whose "
                            f"workers cannot read the events this hopt writes (format {FORMAT}); finish it with "
                            "hopt 0.1, or start it again in a new --dir (`hopt status`, `best`, `log` and `plot` "
                            "read it as it is)")

    def sync(self) -> Population:
        """Catch the population up with the journal; the recipe in force follows what `hopt set` changed."""
        population = self.replica.sync()
        if population.settings != self._settings:  # `hopt set` changed some: in force from here on
            self._settings = dict(population.settings)
            self.recipe = overlay(self.created, self._settings)
            self.leases.settings = self.collector.settings = self.recipe.lease
        return population

    def read_events(self, cursor: Cursor = Cursor()) -> tuple[list[JournalEvent], Cursor]:
        """The journal's valid events after `cursor`, typed, and the cursor past them."""
        return self.replica.read_events(cursor)

    def rebuild(self) -> Population:
        """The population replayed from the whole journal, ignoring the snapshot."""
        return self.replica.rebuild()

    def write_snapshot(self) -> None:
        """Write state.json from this store's view; any process may, with or without the lock."""
        self.replica.write_snapshot()

    # the critical section

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Population]:
        """Hold the lock with the journal repaired and the population current.

        The population catches up before the lock too when it is far behind (a reader needs no lock),
        so that inside it only what others appended meanwhile is read: a new worker's first claim on a
        large experiment otherwise held the lock while it read the snapshot. A transaction that
        appended events may refresh the snapshot, after the lock is released.
        """
        self.check_writable()
        self._after_lock.clear()
        if self.replica.far_behind():
            self.sync()
        with self.lock:
            touch(self.paths.journal)  # a setattr: a network client's reply refreshes its cached size
            before = self.sync().events
            if self.journal.unterminated and self.journal.repair_tail():
                log.warning("cut a torn last line from %s (a crash mid-append)", self.paths.journal)
            yield self.population
            appended = self.population.events != before
            if self.leases.reaped or (appended and self.collector.sweep_due()):
                self.leases.reaped = False
                self.collector.sweep(self.leases.live())
        for tidy in self._after_lock:
            tidy()
        self._after_lock.clear()
        if appended and self.replica.snapshot_due():
            self.write_snapshot()

    def _holding(self, lease: Lease) -> Callable[[], bool]:
        """Whether the journal, as read, still has `lease` as its member's latest claim, not ended."""
        def holding() -> bool:
            member = self.population.members[lease.member]
            return member.token == lease.token and member.claim_open
        return holding

    def claim_next(self, holder: Holder, plan: Planner) -> Claimed | NoClaim:
        """Claim the next member to train in a transaction of its own (see `claim_within`); or say why there is
        none. Once the experiment is complete, what the sweep trashed is deleted too."""
        with self.transaction():
            claim = self.claim_within(holder, plan)
        if claim is NoClaim.COMPLETE:
            self.collector.empty_trash()
        return claim

    def claim_within(self, holder: Holder, plan: Planner) -> Claimed | NoClaim:
        """Claim the next member to train, as `plan` decides on the current population and the members
        leased now (stale leases reclaimed first); or say why there is none. Call inside `transaction()`: a
        worker that has just committed claims its next interval in the commit's critical section.

        An exploit of a finished member is recorded as an adoption (nothing to train: AGAIN). A stop rule
        reached now is journaled (STOPPED). Once the experiment is complete, the leases and checkpoints of
        workers that died are swept: nothing is left behind. Raises ExperimentFailed once a member failed too
        often."""
        population = self.population
        if population.failed:
            raise ExperimentFailed(population.failed)
        if population.complete:
            self.collector.sweep(self.leases.reclaim(holder))
            return NoClaim.COMPLETE
        if stopping.stops(self.recipe.stop, population, time.time(), lambda why: self.stop(why, holder.worker)):
            return NoClaim.STOPPED
        return self._record_choice(plan(population, self.leases.leased(holder)), holder)

    def _record_choice(self, choice: Choice | None, holder: Holder) -> Claimed | NoClaim:
        """The claim (or adoption) `choice` stands for, journaled; inside the transaction."""
        if choice is None:
            return NoClaim.BUSY
        if choice.adopt:
            parent = self.population.members[int(choice.decision.parent)]
            if self.adopt(choice.member, choice.decision, holder):
                log.info("member %d takes over member %d's finished lineage (score %.6g): nothing left to train",
                         choice.member, parent.member, parent.lineage.scores[-1])
            return NoClaim.AGAIN
        lease = self.claim(choice.member, choice.decision, choice.hparams, holder)
        return NoClaim.AGAIN if lease is None else Claimed(lease, choice.decision, choice.hparams)

    def claim(self, member: int, decision: Decision, hparams: dict[str, Any], holder: Holder) -> Lease | None:
        """Record a claim and hand out a lease with a fresh fencing token; None if the claim read back
        void (the decision was made on a stale view). Call inside `transaction()`: the lease file is written
        once the lock is released (three round trips less under it on a network filesystem)."""
        lease = Lease(member, decision.interval, secrets.token_hex(8), holder, round(time.time(), 3),
                      decision.checkpoint)
        claim = Claim(member=member, token=lease.token, decision=decision, hparams=hparams,
                      attempt=self.population.members[member].claims, worker=holder.worker, host=holder.host,
                      pid=holder.pid, pidns=holder.pidns)
        if not self.appends.append(claim):
            return None  # decided on a stale view: plan again on the current one
        # After the lock: the journal's open claim counts as leased until the file is there (LeaseTable.leased).
        self._after_lock.append(lambda: self.leases.write(lease))
        return lease

    def adopt(self, member: int, decision: Decision, holder: Holder) -> bool:
        """Record that `member` takes over the finished lineage of `decision.parent`. Call inside
        `transaction()`: no lease, no training, the parent's checkpoint becomes the member's too.
        False if it read back void (plan again)."""
        parent = self.population.members[int(decision.parent)]
        return self.appends.append(Adopt(member=member, token=secrets.token_hex(8), decision=decision,
                                         hparams=parent.hparams, checkpoint=str(parent.checkpoint),
                                         score=parent.lineage.scores[-1], worker=holder.worker))

    def commit(self, lease: Lease, decision: Decision, hparams: dict[str, Any], score: float,
               metrics: dict[str, Any], checkpoint: str, threads: dict[str, str] | None = None,
               digest: str | None = None) -> bool:
        """Record the interval whose checkpoint `Staging.publish` renamed in (trained with these thread settings, its
        content `digest` taken before the lock); False if our token was fenced off, and the checkpoint goes.

        Call inside `transaction()`. Whether the lease is still ours is the journal's to say (a lease file
        read back may be a cached copy).
        """
        event = Commit(member=lease.member, token=lease.token, decision=decision, hparams=hparams,
                       checkpoint=checkpoint, score=score, metrics=metrics, threads=threads, digest=digest,
                       worker=lease.holder.worker)
        before = self.population.referenced_checkpoints()
        if not self.appends.append_while(event, self._holding(lease)):
            self._after_lock.append(lambda: self.collector.discard(self.paths.checkpoint(checkpoint)))
            return False
        # Under the lock: once it is released another claim of the member may write the member's lease file.
        self.appends.when_landed(lambda: self.leases.drop(lease))
        # What the commit released is the journal's garbage: a crash before this leaves it to the sweep.
        self._after_lock.append(lambda: self.collector.collect_released(before))
        return True

    def commit_and_claim(self, lease: Lease, decision: Decision, hparams: dict[str, Any], score: float,
                         metrics: dict[str, Any], checkpoint: str, holder: Holder, plan: Planner,
                         threads: dict[str, str] | None = None, digest: str | None = None,
                         ) -> tuple[bool, Claimed | NoClaim | None]:
        """`commit`, then `claim_within` for `holder`, their events written in one append and read back once;
        the claim is None when the experiment has failed. Call inside `transaction()`.

        The two lines are numbered in sequence from our view, so they are valid or void together; if void,
        both are made again one at a time on the current view. Once the commit completes the experiment, the
        claim (which sweeps) waits for the commit's line to be written."""
        commit = (lease, decision, hparams, score, metrics, checkpoint, threads, digest)
        claim: Claimed | NoClaim | None = None
        tidy = len(self._after_lock)
        with self.appends.ahead() as landed:
            committed = self.commit(*commit)
            if not (self.population.complete or self.population.failed):
                claim = self.claim_within(holder, plan)
        if not landed():  # read the journal again, and drop what the void lines queued for after the lock
            del self._after_lock[tidy:]
            self.sync()
            committed, claim = self.commit(*commit), None
        if claim is None and not self.population.failed:
            claim = self.claim_within(holder, plan)
        return committed, claim

    def keep_interval_log(self, lease: Lease, output: bytes) -> None:
        """Keep what `lease`'s interval wrote, under its checkpoint's name, before its commit or failure
        names it. A log that cannot be written (or that a power cut empties) costs the log only, never
        the interval."""
        path = self.paths.interval_log(checkpoint_name(lease.member, lease.interval, lease.token))
        try:
            with contextlib.suppress(FileNotFoundError):  # no folder yet: the experiment's first interval log
                return write_atomic(path, output, sync_dir=False, durable=False)
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, output, sync_dir=False, durable=False)
        except OSError as err:
            log.warning("could not keep the log of member %d interval %d in %s (%s); the worker's log has its "
                        "output", lease.member, lease.interval, path, err.strerror)

    def fail(self, lease: Lease, error: str, staging: Path) -> bool:
        """Record a failed interval; the member resumes from its last good checkpoint next time."""
        self.collector.discard(staging)
        event = events.fail(lease.member, lease.interval, lease.token, error, lease.holder.worker)
        if not self.appends.append_while(event, self._holding(lease)):
            return False
        self.leases.drop(lease)
        return True

    def release(self, lease: Lease, reason: str, staging: Path) -> bool:
        """Give a member back untrained (preemption); another worker may take it at once."""
        self.collector.discard(staging)
        event = Release(member=lease.member, interval=lease.interval, token=lease.token, reason=reason,
                        worker=lease.holder.worker)
        if not self.appends.append_while(event, self._holding(lease)):
            return False
        self.leases.drop(lease)
        return True

    def retry(self) -> bool:
        """Clear a failed experiment so workers try again; False if it had not failed."""
        with self.transaction() as population:
            if population.failed is None:
                return False
            return self.appends.append_while(Retry(worker=RETRY_WORKER), lambda: self.population.failed is not None)

    def extend(self, population: int | None = None, intervals: int | None = None) -> bool:
        """Grow the budget to `population` members and `intervals` intervals each (None: as it is now);
        False if it is that already and not stopped (an extend resumes a stopped one). Running workers see it at
        their next claim; finished ones do not come back by themselves."""
        with self.transaction() as current:
            size = current.size if population is None else population
            length = current.intervals if intervals is None else intervals
            if size < current.size or length < current.intervals:
                raise HoptError(f"hopt extend only grows an experiment: it has {current.size} members x "
                                f"{current.intervals} intervals, not fewer; to run a smaller one, use a new --dir")
            event = Extend(population=size, intervals=length, worker=EXTEND_WORKER)
            return self.appends.append_while(event, lambda: current.size <= size and current.intervals <= length
                                     and ((current.size, current.intervals) != (size, length) or current.stopped))

    def stop(self, reason: str, worker: str) -> bool:
        """Record that a stop rule was reached (call inside `transaction()`); False if already stopped."""
        return self.appends.append_while(Stop(reason=reason, worker=worker), lambda: self.population.stopped is None)

    def change_settings(self, settings: dict[str, Any]) -> bool:
        """Put `settings` (dotted recipe keys, checked by settings.parse) in force for every worker from its next
        claim on; False if they are already. RecipeError if they make the recipe invalid (nothing is written)."""
        with self.transaction():
            if overlay(self.recipe, settings).to_dict() == self.recipe.to_dict():
                return False
            return self.appends.append_while(Set(settings=settings, worker=SET_WORKER), lambda: True)

def _empty_population(recipe: Recipe) -> Population:
    return Population(recipe.population, recipe.intervals, recipe.objective.maximize, recipe.keep_best,
                      recipe.max_failures)


def _any_entry(folder: Path) -> bool:
    with contextlib.suppress(FileNotFoundError):
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    return False


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "the top level"

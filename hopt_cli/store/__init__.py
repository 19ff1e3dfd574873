"""The store: the experiment directory protocol of DESIGN.md, and all of hopt's I/O on it.

Claims and commits run inside `transaction()`: the lock is held, a torn journal tail is cut, and the
in-memory population has caught up with the journal. The store never decides anything; it records
what the worker loop decided and keeps every invariant of the directory.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hopt_cli import events
from hopt_cli.decision import Decision
from hopt_cli.errors import CorruptFile, FilesystemError, HoptError, LockNotExclusive, RecipeError, command
from hopt_cli.events import Adopt, Claim, Commit, Extend, JournalEvent, Reclaim, Release, Retry, Set, Stop
from hopt_cli.population import MemberState, Population
from hopt_cli.recipe import FORMAT, Recipe
from hopt_cli.settings import SECTIONS, SETTABLE, overlay
from hopt_cli.store import snapshot
from hopt_cli.store.fsio import (RETRIES, create_exclusive, fsync_dir, is_temporary, patience, read_bytes, retrying,
                                touch, unless_gone, write_atomic, write_json_atomic)
from hopt_cli.store.journal import Cursor, Journal
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.store.locking import abandoned_claims, make_lock
from hopt_cli.store.paths import (ExperimentPaths, checkpoint_name, checkpoint_position, checkpoint_token,
                                 lease_member)
from hopt_cli.store.snapshot import events_in

NOT_A_LEASE = "not a valid lease file"
RETRY_WORKER = "hopt-retry"  # who a retry event names: the user, through `hopt retry`
EXTEND_WORKER = "hopt-extend"  # and an extend event: the user, through `hopt extend`
SET_WORKER = "hopt-set"  # and a set event: the user, through `hopt set`
CATCH_UP_BYTES = 1 << 16  # a journal tail longer than this is read before taking the lock
CONFLICT_LIMIT = 3  # void appends in a row: more than stale caches explain, so the lock does not exclude


@dataclass(frozen=True)
class LeaseInfo:
    """A lease file as found on disk, with its heartbeat age on the filesystem's clock."""

    path: Path
    lease: Lease | None
    age: float


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
        self.population = self._empty_population()
        self.cursor = Cursor()
        self.conflicts = 0  # our appends in a row that read back void
        self._mine: bytes | None = None  # the line we appended last, until we read it back
        self._landed: bool | None = None  # whether it read back valid
        self._loaded = False
        self._listed: float | None = None  # when (monotonic) our last reclaim listed leases/
        self._swept: float | None = None  # when our last sweep for crash leftovers was
        self._reaped = False  # we reclaimed a dead worker's lease or claim: what it left is swept at once
        self._after_lock: list[Callable[[], None]] = []  # a transaction's filesystem work that needs no lock
        self._snapshot_seen: tuple[tuple[int, int, int] | None, int] = (None, 0)  # state.json's stat, its events
        self._leases_read: dict[tuple[str, int, int, int], tuple[Path, Lease | None]] = {}

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

    def _empty_population(self) -> Population:
        r = self.recipe
        return Population(r.population, r.intervals, r.objective.maximize, r.keep_best, r.max_failures)

    # reading

    def sync(self) -> Population:
        """Catch the in-memory population up with the journal (snapshot first, then the tail)."""
        if not self._loaded:
            self._load_snapshot()
            self._loaded = True
        self.cursor = self.journal.replay(self.cursor, self._visit)
        if self.population.settings != self._settings:  # `hopt set` changed some: in force from here on
            self._settings = dict(self.population.settings)
            self.recipe = overlay(self.created, self._settings)
        return self.population

    def _visit(self, data: dict[str, Any], line: bytes, valid: bool) -> None:
        if valid:
            self._apply(data)
        else:
            logging.getLogger("hopt").debug("journal line %d is void (it does not follow the line before it): %s",
                                            self.cursor.lines, line.decode(errors="replace").rstrip())
        if line == self._mine:
            self._landed = valid

    def _apply(self, data: dict[str, Any], population: Population | None = None) -> None:
        """Apply one valid journal line's event to `population` (ours by default)."""
        population = self.population if population is None else population
        try:
            population.apply(events.decode(data))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise self._bad_event(data, f"event {population.events + 1}", err) from None

    def _bad_event(self, data: dict[str, Any], where: str, err: Exception) -> CorruptFile:
        return CorruptFile(self.paths.journal, f"{where} ({data.get('type')} of member {data.get('member')}) "
                           f"cannot be applied: {err}", "restore the file from a backup, or cut the journal before "
                           "that event and delete state.json")

    def read_events(self, cursor: Cursor = Cursor()) -> tuple[list[JournalEvent], Cursor]:
        """The journal's valid events after `cursor`, typed, and the cursor past them."""
        found: list[JournalEvent] = []
        lines = cursor.lines

        def visit(data: dict[str, Any], line: bytes, valid: bool) -> None:
            nonlocal lines
            lines += 1
            if valid:
                try:
                    found.append(events.decode(data))
                except ValueError as err:
                    raise self._bad_event(data, f"line {lines}", err) from None

        return found, self.journal.replay(cursor, visit)

    def _load_snapshot(self) -> None:
        """Start from state.json when it is valid; otherwise from an empty population (full replay)."""
        try:
            population, cursor = snapshot.decode(json.loads(read_bytes(self.paths.state)))
            self._check_journal_reaches(cursor.offset)
            if not self._is_line_boundary(cursor.offset):
                raise ValueError("snapshot does not match the journal")
        except FileNotFoundError:
            return
        except (ValueError, TypeError, KeyError, AttributeError, FilesystemError):
            self._note(f"{self.paths.state} is unreadable or stale; rebuilding it from the journal")
            return
        self.population, self.cursor = population, cursor

    def _check_journal_reaches(self, offset: int) -> None:
        """A journal shorter than the snapshot lost committed events: never replay it as if nothing happened.

        A network client may report a cached size: the journal is looked at again, through fresh opens
        for about a second, before anything is said."""
        for _ in patience():
            size = retrying(lambda: _size(self.paths.journal), self.paths.journal)
            if offset <= size:
                return
        self.journal.check_lines()  # a garbage line that replaced a longer one is no truncation: name it
        raise CorruptFile(self.paths.journal, f"is shorter than state.json records ({size} < {offset} bytes): "
                              "it was truncated or replaced, so committed intervals would be lost",
                              "restore it from a backup; or, to accept the loss, delete state.json")

    def _is_line_boundary(self, offset: int) -> bool:
        if offset == 0:
            return True
        with open(self.paths.journal, "rb") as handle:
            handle.seek(offset - 1)
            return handle.read(1) == b"\n"

    def rebuild(self) -> Population:
        """The population replayed from the whole journal, ignoring the snapshot."""
        population = self._empty_population()
        self.journal.replay(Cursor(), lambda data, line, valid: self._apply(data, population) if valid else None)
        return population

    def lease_infos(self) -> list[LeaseInfo]:
        """Every lease file and its heartbeat age, measured on the shared filesystem's clock.

        A lease file is read again only when its inode, size or mtime changed (a heartbeat changes
        the mtime): every claim and commit lists the leases, and each worker's would otherwise be
        parsed twice per interval by every other worker.
        """
        try:
            now = touch(self.paths.clock)
        except OSError:  # a reader without write access (a read-only mount) falls back to this host's clock
            now = time.time()
        with os.scandir(self.paths.leases) as entries:
            found = sorted((e for e in entries if e.name.endswith(".json")), key=lambda e: e.name)
        infos, seen = [], {}
        for entry in found:
            try:
                stat = retrying(entry.stat, Path(entry.path))
            except FileNotFoundError:
                continue
            key = (entry.name, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            try:
                path, lease = seen[key] = self._leases_read.get(key) or self._read_lease(entry.name)
            except FilesystemError:  # a stale handle that outlasted the retries: neither live nor stale now
                continue
            infos.append(LeaseInfo(path, lease, now - stat.st_mtime))
        self._leases_read = seen
        return infos

    def _read_lease(self, name: str) -> tuple[Path, Lease | None]:
        path = self.paths.leases / name
        return path, Lease.read(path)

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
        if self._far_behind():
            self.sync()
        with self.lock:
            touch(self.paths.journal)  # a setattr: a network client's reply refreshes its cached size
            before = self.sync().events
            if self.journal.unterminated and self.journal.repair_tail():
                self._note(f"cut a torn last line from {self.paths.journal} (a crash mid-append)")
            yield self.population
            appended = self.population.events != before
            if self._reaped or (appended and self._sweep_due()):
                self._reaped = False
                self.drop_leftovers()
                self.collect_garbage([info.lease for info in self.lease_infos() if info.lease is not None])
        for tidy in self._after_lock:
            tidy()
        self._after_lock.clear()
        if appended and self._snapshot_due():
            self.write_snapshot()

    def _sweep_due(self) -> bool:
        """Whether to look for what crashed workers left behind (three listings, 11 ms on GlusterFS) though
        we reclaimed nothing: once per lease timeout of this worker, since what a sweep takes must be older
        than that (a staging folder, a temporary file), or was left by a crash that a reclaim finds (the
        checkpoint a dead worker's commit renamed in or released), which sweeps at once."""
        now = time.monotonic()
        if self._swept is None:  # a random phase: workers started together do not all sweep at their first claim
            self._swept = now - random.uniform(0.0, self.recipe.lease.timeout)
        if now - self._swept < self.recipe.lease.timeout:
            return False
        self._swept = now
        return True

    def _far_behind(self) -> bool:
        """Whether catching up may take long: nothing loaded yet, or the journal (as a possibly cached stat
        says) has grown by more than CATCH_UP_BYTES. Reading a short tail under the lock saves an open,
        a round trip on a network filesystem."""
        if not self._loaded:
            return True
        try:
            return os.stat(self.paths.journal).st_size - self.cursor.offset > CATCH_UP_BYTES
        except OSError:
            return True

    def _append(self, event: JournalEvent) -> bool:
        """Append `event` and read it back, with whatever others appended before it; True if it is
        valid. A void one (our view was stale) changed nothing, and the population is current now.

        Past CONFLICT_LIMIT void appends in a row, someone writes while we hold the lock: stop."""
        self._mine, self._landed = self.journal.append(events.encode(event.at(round(time.time(), 3))), self.cursor), None
        try:
            for _ in patience():  # until our own append is visible: a size may be cached
                self.sync()
                if self._landed is not None:
                    break
            else:
                raise FilesystemError(self.paths.journal, "the event just appended cannot be read back", RETRIES)
            landed = self._landed
        finally:
            self._mine = self._landed = None
        self.conflicts = 0 if landed else self.conflicts + 1
        if not landed:
            self._note(f"our {event.kind} event for member {getattr(event, 'member', None)} is void: other workers "
                       "appended to the journal after we last read it (a stale cache, or a lock that did not "
                       "exclude); read again")
        if self.conflicts >= CONFLICT_LIMIT:
            raise LockNotExclusive(self.paths.journal, self.conflicts, self.recipe.lock)
        return landed

    def _append_while(self, event: JournalEvent, wanted: Callable[[], bool]) -> bool:
        """Append `event` until it lands valid, as long as `wanted()` holds for the state read back."""
        while wanted():
            if self._append(event):
                return True
        return False

    def _holding(self, lease: Lease) -> Callable[[], bool]:
        """Whether the journal, as read, still has `lease` as its member's latest claim, not ended."""
        def holding() -> bool:
            member = self.population.members[lease.member]
            return member.token == lease.token and member.claim_open
        return holding

    def leased(self, here: Holder) -> set[int]:
        """The members being trained now, after reclaiming what may have gone stale. Call inside `transaction()`.

        Listing leases/ costs a round trip per entry on a network filesystem (3.7 ms of a claim's 8.6 on
        GlusterFS), and a lease only goes stale after `lease.timeout` (at least two heartbeats) without a
        heartbeat: so the listing is made once per heartbeat period, or at once when an open claim of the
        journal belongs to a process of this host that is gone. In between the journal's open claims are
        the leased members; one we have not read yet makes our claim of its member void on read-back.
        """
        now = time.monotonic()
        if self._listed is None or now - self._listed >= self.recipe.lease.heartbeat or self._claimer_gone(here):
            live = {lease.member for lease in self.reclaim(here)}
            self._listed = now
        else:
            live = set()
        return live | self.population.claimed()

    def _claimer_gone(self, here: Holder) -> bool:
        """Whether an open claim was made by a process of this host (and pid namespace) that is gone."""
        claimers = (_claimer(m) for m in self.population.members if m.claim_open)
        return any(holder is not None and holder.is_gone(here) for holder in claimers)

    def reclaim(self, here: Holder) -> list[Lease]:
        """Drop leases that are expired, unreadable, already committed or held by a dead local process.

        Returns the live leases. Call inside `transaction()`.
        """
        live = []
        infos = self.lease_infos()
        for info in infos:
            reason = self._why_stale(info, here)
            if reason is not None and info.lease is not None:  # judged on a cached read: read it again
                info = LeaseInfo(info.path, Lease.read(info.path), info.age)
                reason = self._why_stale(info, here)
            if reason is None:
                live.append(info.lease)
                continue
            self._end_claim_of(info, reason, here)
            info.path.unlink(missing_ok=True)  # after the event: a crash between leaves it to reclaim again
            self._note(f"reclaimed lease {info.path.name}: {reason}")
            self._reaped = True
        self._end_claims_without_lease({lease_member(info.path.name) for info in infos}, here)
        return live

    def _end_claims_without_lease(self, listed: set[int | None], here: Holder) -> None:
        """End open claims that have no lease file, once that cannot be a listing not caught up yet: its
        holder is gone (a worker killed between the claim and its lease file), or the claim is older
        than the lease timeout."""
        now = time.time()
        for state in self.population.members:
            if not state.claim_open or state.member in listed:
                continue
            holder = _claimer(state)
            age = now - (state.claim_time or now)
            if holder is not None and holder.is_gone(here):
                reason = f"its claim has no lease file and its holder (pid {holder.pid} on this host) is gone"
            elif age > self.recipe.lease.timeout:
                reason = f"its claim has no lease file after {age:.0f} s (timeout {self.recipe.lease.timeout:.0f} s)"
            else:
                continue
            if self._end_claim(state, state.interval, state.token, reason, holder.worker if holder else None, here):
                self._note(f"reclaimed the claim of member {state.member}: {reason}")
                self._reaped = True

    def _end_claim_of(self, info: LeaseInfo, reason: str, here: Holder) -> None:
        """Journal the end of the claim a reclaimed lease file stood for (found by its file name when its
        content is no lease), if the journal has that claim open."""
        member = info.lease.member if info.lease is not None else lease_member(info.path.name)
        if member is None or not 0 <= member < self.population.size:
            return
        state, lease = self.population.members[member], info.lease
        if lease is None:
            self._end_claim(state, state.interval, state.token, reason, None, here)
        else:
            self._end_claim(state, lease.interval, lease.token, reason, lease.holder.worker, here)

    def _end_claim(self, state: MemberState, interval: int, token: str | None, reason: str, holder: str | None,
                   here: Holder) -> bool:
        """Journal a reclaim ending the claim `token` of `state`'s member, if the journal still has it open."""
        event = Reclaim(member=state.member, interval=interval, token=token, reason=reason, holder=holder,
                        worker=here.worker)
        return self._append_while(event, lambda: state.token == token and state.claim_open)

    def _why_stale(self, info: LeaseInfo, here: Holder) -> str | None:
        lease = info.lease
        if lease is None or not 0 <= lease.member < self.population.size:
            return NOT_A_LEASE
        if self.population.members[lease.member].interval > lease.interval:
            return "its interval is already committed"
        if info.age > self.recipe.lease.timeout:
            return f"no heartbeat for {info.age:.0f} s (timeout {self.recipe.lease.timeout:.0f} s)"
        if lease.holder_is_gone(here):
            return f"its holder (pid {lease.holder.pid} on this host) is gone"
        return None

    def claim(self, member: int, decision: Decision, hparams: dict[str, Any], holder: Holder) -> Lease | None:
        """Record a claim and hand out a lease with a fresh fencing token; None if the claim read back
        void (the decision was made on a stale view). Call inside `transaction()`."""
        lease = Lease(member, decision.interval, secrets.token_hex(8), holder, touch(self.paths.clock),
                      decision.checkpoint)
        claim = Claim(member=member, token=lease.token, decision=decision, hparams=hparams,
                      attempt=self.population.members[member].claims, worker=holder.worker, host=holder.host,
                      pid=holder.pid, pidns=holder.pidns)
        if not self._append(claim):
            return None  # decided on a stale view: plan again on the current one
        write_json_atomic(self.paths.lease(member), lease.to_dict(), sync_dir=False)
        return lease

    def adopt(self, member: int, decision: Decision, holder: Holder) -> bool:
        """Record that `member` takes over the finished lineage of `decision.parent`. Call inside
        `transaction()`: no lease, no training, the parent's checkpoint becomes the member's too.
        False if it read back void (plan again)."""
        parent = self.population.members[int(decision.parent)]
        return self._append(Adopt(member=member, token=secrets.token_hex(8), decision=decision, hparams=parent.hparams,
                                  checkpoint=str(parent.checkpoint), score=parent.lineage.scores[-1],
                                  worker=holder.worker))

    def holds(self, lease: Lease) -> bool:
        """Whether `lease` is still the one on disk (its token was not fenced off)."""
        current = Lease.read(self.paths.lease(lease.member))
        return current is not None and current.token == lease.token

    def commit(self, lease: Lease, decision: Decision, hparams: dict[str, Any], score: float,
               metrics: dict[str, Any], staging: Path, threads: dict[str, str] | None = None,
               digest: str | None = None) -> str | None:
        """Publish the checkpoint and record the interval (trained with these thread settings, its
        checkpoint's content `digest` taken before the lock); None if our token was fenced off.

        Call inside `transaction()`. The rename is made durable before the event that names it. Whether
        the lease is still ours is the journal's to say (a lease file read back may be a cached copy).
        """
        if not self._holding(lease)():
            self._discard(staging)
            return None
        name = checkpoint_name(lease.member, lease.interval, lease.token)
        try:
            os.rename(staging, self.paths.checkpoint(name))
        except FileNotFoundError:  # collected as an orphan (a lock that did not exclude, a stale listing)
            self._note(f"{staging} was collected while its interval trained; the interval is discarded")
            self.release(lease, "its staging folder was collected while it trained", staging)
            return None
        fsync_dir(self.paths.checkpoints)
        event = Commit(member=lease.member, token=lease.token, decision=decision, hparams=hparams, checkpoint=name,
                       score=score, metrics=metrics, threads=threads, digest=digest, worker=lease.holder.worker)
        before = self.population.referenced_checkpoints()
        if not self._append_while(event, self._holding(lease)):
            return None  # another claim of the member came first: our checkpoint is unreferenced garbage
        self._after_lock.append(lambda: self._tidy_after_commit(lease, before))
        return name

    def _tidy_after_commit(self, lease: Lease, before: set[str]) -> None:
        """Drop the committed lease and trash what the commit released, after the lock: both are the
        journal's garbage now, which a crash before this leaves to the reclaim and the sweep."""
        self.paths.lease(lease.member).unlink(missing_ok=True)
        self._collect_released(before)

    def _collect_released(self, before: set[str]) -> None:
        """Trash the checkpoints the events since `before` left without a reference (the member's previous
        one, a best entry displaced): known from the journal, so no listing is needed."""
        for released in before - self.population.referenced_checkpoints():
            if self._superseded(released):
                self._discard(self.paths.checkpoint(released))
                self.paths.interval_log(released).unlink(missing_ok=True)

    def keep_interval_log(self, lease: Lease, output: bytes) -> None:
        """Keep what `lease`'s interval wrote, under its checkpoint's name, before its commit or failure
        names it. A log that cannot be written (or that a power cut empties) costs the log only, never
        the interval."""
        path = self.paths.interval_log(checkpoint_name(lease.member, lease.interval, lease.token))
        try:
            path.parent.mkdir(exist_ok=True)
            write_atomic(path, output, sync_dir=False, durable=False)
        except OSError as err:
            self._note(f"could not keep the log of member {lease.member} interval {lease.interval} in {path} "
                       f"({err.strerror}); the worker's log has its output")

    def fail(self, lease: Lease, error: str, staging: Path) -> bool:
        """Record a failed interval; the member resumes from its last good checkpoint next time."""
        self._discard(staging)
        event = events.fail(lease.member, lease.interval, lease.token, error, lease.holder.worker)
        if not self._append_while(event, self._holding(lease)):
            return False
        self.paths.lease(lease.member).unlink()
        return True

    def release(self, lease: Lease, reason: str, staging: Path) -> bool:
        """Give a member back untrained (preemption); another worker may take it at once."""
        self._discard(staging)
        event = Release(member=lease.member, interval=lease.interval, token=lease.token, reason=reason,
                        worker=lease.holder.worker)
        if not self._append_while(event, self._holding(lease)):
            return False
        self.paths.lease(lease.member).unlink()
        return True

    def retry(self) -> bool:
        """Clear a failed experiment so workers try again; False if it had not failed."""
        with self.transaction() as population:
            if population.failed is None:
                return False
            return self._append_while(Retry(worker=RETRY_WORKER), lambda: self.population.failed is not None)

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
            return self._append_while(event, lambda: current.size <= size and current.intervals <= length
                                      and ((current.size, current.intervals) != (size, length) or current.stopped))

    def stop(self, reason: str, worker: str) -> bool:
        """Record that a stop rule was reached (call inside `transaction()`); False if already stopped."""
        return self._append_while(Stop(reason=reason, worker=worker), lambda: self.population.stopped is None)

    def change_settings(self, settings: dict[str, Any]) -> bool:
        """Put `settings` (dotted recipe keys, checked by settings.parse) in force for every worker from its next
        claim on; False if they are already. RecipeError if they make the recipe invalid (nothing is written)."""
        with self.transaction():
            if overlay(self.recipe, settings).to_dict() == self.recipe.to_dict():
                return False
            return self._append_while(Set(settings=settings, worker=SET_WORKER), lambda: True)

    def heartbeat(self, lease: Lease) -> bool:
        """Refresh our lease's age without the lock; False once the lease is no longer ours."""
        if not self.holds(lease):
            return False
        with contextlib.suppress(FileNotFoundError):
            touch(self.paths.lease(lease.member))
        return True

    # snapshot and garbage

    def _snapshot_due(self) -> bool:
        """Whether the tail since state.json (whoever wrote it) reaches the population size, or we are done."""
        pending = self.population.events - self._snapshot_events()
        return pending >= self.population.size or self.population.complete

    def _snapshot_events(self) -> int:
        """How many events state.json reflects, read again only when its attributes changed: a stat is
        answered from a network client's cache, an open is a round trip. A stale answer only makes a
        snapshot come early or late."""
        try:
            stat = os.stat(self.paths.state)
        except OSError:
            return 0
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key != self._snapshot_seen[0]:
            self._snapshot_seen = (key, events_in(self.paths.state))
        return self._snapshot_seen[1]

    def write_snapshot(self) -> None:
        """Write state.json from this store's view; any process may, with or without the lock.

        Two writers may race and the older snapshot win: a reader then replays a longer tail.
        """
        write_json_atomic(self.paths.state, snapshot.encode(self.population, self.cursor), sync_dir=False)

    def collect_garbage(self, live: list[Lease]) -> int:
        """Move unreferenced checkpoints and orphan staging folders to trash/.

        Call inside `transaction()` with the live leases; `empty_trash()` deletes outside the lock.
        Nothing in use goes even if the lock ever failed and another worker committed or claimed
        meanwhile: the leases are read again, then the journal (a commit appends its event before it
        drops its lease), and an entry is kept if either still wants it.
        """
        moved = 0
        self._drop_interval_logs()
        candidates = self._unwanted(live)
        if candidates:
            leases = [info.lease for info in self.lease_infos() if info.lease is not None]
            self.sync()
            in_use = self._wanted(leases)
            for entry in candidates:
                if entry.name not in in_use and checkpoint_token(entry.name) not in in_use:
                    with unless_gone():  # another node's sweep took it first; anything left goes at the next one
                        os.rename(entry.path, self.paths.trash / f"{entry.name}.{secrets.token_hex(4)}")
                        moved += 1
        return moved

    def _drop_interval_logs(self) -> None:
        """Delete the logs of intervals whose member has moved past them, except the referenced checkpoints':
        a log is kept while its checkpoint is, and a failed attempt's until its member trains that interval."""
        referenced = self.population.referenced_checkpoints()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.paths.interval_logs):
                name = entry.name.removesuffix(".log")
                if entry.name.endswith(".log") and name not in referenced and self._superseded(name):
                    with unless_gone():
                        os.unlink(entry.path)

    def _wanted(self, live: list[Lease]) -> set[str]:
        """Names of checkpoints and staging folders in use: referenced, resumed or trained by an open
        claim of the journal or a lease."""
        return (self.population.referenced_checkpoints() | self.population.open_claims()
                | {l.parent_checkpoint for l in live if l.parent_checkpoint} | {l.token for l in live})

    def _unwanted(self, live: list[Lease]) -> list[os.DirEntry]:
        """Garbage as far as the journal we read can tell; a listing alone proves nothing.

        A checkpoint is garbage once its member has moved past its interval: one whose commit we have
        not read yet (a stale view) is never taken. A staging folder is garbage once no claim we know
        trains in it and it is older than the lease timeout, so a claim we have not read yet keeps it
        (once the experiment is complete, nothing trains any more)."""
        wanted = self._wanted(live)
        now = touch(self.paths.clock)
        found = [entry for entry in os.scandir(self.paths.checkpoints)
                 if entry.name not in wanted and self._superseded(entry.name)]
        for entry in os.scandir(self.paths.staging):
            if entry.name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    age = now - retrying(entry.stat, Path(entry.path)).st_mtime
                    if self.population.complete or age > self.recipe.lease.timeout:
                        found.append(entry)
        return found

    def _superseded(self, name: str) -> bool:
        """Whether the checkpoint `name` (m<member>-i<interval>-<token>) is behind its member in our view."""
        member, interval = checkpoint_position(name)
        return member is None or (0 <= member < len(self.population.members)
                                  and self.population.members[member].interval > interval)

    def drop_leftovers(self) -> None:
        """Delete temporary files and hard-lock claims that crashed writers left behind.

        Temp files of leases, written under the lock, cannot be in flight; others (of state.json,
        experiment.yaml, the sbatch script) are dropped once older than the lease timeout, as are claims
        of hard-link lockers that died waiting. Call inside `transaction()`.
        """
        now = touch(self.paths.clock)
        old = self.recipe.lease.timeout
        for folder in (self.paths.root, self.paths.leases, self.paths.slurm, self.paths.interval_logs):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if not is_temporary(entry.name):
                        continue
                    with unless_gone():
                        if folder == self.paths.leases or now - entry.stat().st_mtime > old:
                            os.unlink(entry.path)
        for claim in abandoned_claims(self.paths, Holder.this_process("gc"), now, self.lock.timeout):
            claim.unlink(missing_ok=True)

    def empty_trash(self) -> None:
        for entry in os.scandir(self.paths.trash):
            shutil.rmtree(entry.path, ignore_errors=True)
            with unless_gone(), contextlib.suppress(IsADirectoryError):
                os.unlink(entry.path)

    def _discard(self, folder: Path) -> None:
        with unless_gone():
            os.rename(folder, self.paths.trash / f"{folder.name}.{secrets.token_hex(4)}")

    def _note(self, message: str) -> None:
        logging.getLogger("hopt").warning(message)


def _claimer(state: MemberState) -> Holder | None:
    """The process that made `state`'s latest claim, when the journal recorded its pid."""
    return Holder(**state.claim_holder) if state.claim_holder and state.claim_holder.get("pid") else None


def _size(path: Path) -> int:
    """The file's size as a fresh open sees it (and as reading it to the end would)."""
    with open(path, "rb") as handle:
        return handle.seek(0, os.SEEK_END)


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

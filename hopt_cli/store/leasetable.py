"""The lease table: which member each worker trains now, and the only judge of when a lease is stale.

Workers (to reclaim) and `hopt status` (to say who is live) ask the same question here, so they cannot
disagree. A lease is stale when it is no valid lease, when the journal already committed its interval,
when it had no heartbeat for the lease timeout, or when its process is seen gone on this host.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.errors import FilesystemError
from hopt_cli.events import JournalEvent, Reclaim
from hopt_cli.population import MemberState, Population
from hopt_cli.recipe import LeaseSettings
from hopt_cli.store.fsio import retrying, touch, write_json_atomic
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.store.paths import ExperimentPaths, lease_member
from hopt_cli.store.replica import Replica

NOT_A_LEASE = "not a valid lease file"

log = logging.getLogger("hopt")
Record = Callable[[JournalEvent, Callable[[], bool]], bool]  # append an event while the condition holds


@dataclass(frozen=True)
class LeaseInfo:
    """A lease file as found on disk, with its heartbeat age on the filesystem's clock."""

    path: Path
    lease: Lease | None
    age: float


class LeaseTable:
    """The leases/ folder of one experiment, as one process sees it."""

    def __init__(self, paths: ExperimentPaths, settings: LeaseSettings, replica: Replica, record: Record) -> None:
        self.paths = paths
        self.settings = settings
        self.replica = replica
        self.record = record  # the store's journaled append, for the reclaim events
        self.reaped = False  # we reclaimed a dead worker's lease or claim: what it left may be swept at once
        self._listed: float | None = None  # when (monotonic) our last reclaim listed leases/
        self._read: dict[tuple[str, int, int, int], tuple[Path, Lease | None]] = {}

    def infos(self) -> list[LeaseInfo]:
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
                path, lease = seen[key] = self._read.get(key) or self._read_lease(entry.name)
            except FilesystemError:  # a stale handle that outlasted the retries: neither live nor stale now
                continue
            infos.append(LeaseInfo(path, lease, now - stat.st_mtime))
        self._read = seen
        return infos

    def _read_lease(self, name: str) -> tuple[Path, Lease | None]:
        path = self.paths.leases / name
        return path, Lease.read(path)

    def live(self) -> list[Lease]:
        """The valid leases on disk, stale or not."""
        return [info.lease for info in self.infos() if info.lease is not None]

    def why_stale(self, info: LeaseInfo, population: Population, here: Holder) -> str | None:
        """Why the lease `info` is stale as `here` sees it with `population` read; None while it is live."""
        lease, timeout = info.lease, self.settings.timeout
        if lease is None or not 0 <= lease.member < population.size:
            return NOT_A_LEASE
        if population.members[lease.member].interval > lease.interval:
            return "its interval is already committed"
        if info.age > timeout:
            return f"no heartbeat for {info.age:.0f} s (timeout {timeout:.0f} s)"
        if lease.holder.is_gone(here):
            return f"its holder (pid {lease.holder.pid} on this host) is gone"
        return None

    def write(self, lease: Lease) -> None:
        """Hand `lease` out (after its claim is journaled). Never fsynced: a power cut that loses it loses a
        heartbeat file whose claim the journal keeps, and that is reclaimed like any lease gone stale."""
        write_json_atomic(self.paths.lease(lease.member), lease.to_dict(), sync_dir=False, durable=False)

    def drop(self, lease: Lease) -> None:
        """Remove `lease`'s file: the journal has ended its claim."""
        self.paths.lease(lease.member).unlink(missing_ok=True)

    def holds(self, lease: Lease) -> bool:
        """Whether `lease` is still the one on disk (its token was not fenced off)."""
        current = Lease.read(self.paths.lease(lease.member))
        return current is not None and current.token == lease.token

    def heartbeat(self, lease: Lease) -> bool:
        """Refresh our lease's age without the lock; False once the lease is no longer ours."""
        if not self.holds(lease):
            return False
        with contextlib.suppress(FileNotFoundError):
            touch(self.paths.lease(lease.member))
        return True

    def leased(self, here: Holder) -> set[int]:
        """The members being trained now, after reclaiming what may have gone stale. Call inside the transaction.

        Listing leases/ costs a round trip per entry on a network filesystem (3.7 ms of a claim's 8.6 on
        GlusterFS), and a lease only goes stale after `lease.timeout` (at least two heartbeats) without a
        heartbeat: so the listing is made once per heartbeat period, or at once when an open claim of the
        journal belongs to a process of this host that is gone. In between the journal's open claims are
        the leased members; one we have not read yet makes our claim of its member void on read-back.
        """
        now = time.monotonic()
        if self._listed is None or now - self._listed >= self.settings.heartbeat or self._claimer_gone(here):
            live = {lease.member for lease in self.reclaim(here)}
            self._listed = now
        else:
            live = set()
        return live | self.replica.population.claimed()

    def _claimer_gone(self, here: Holder) -> bool:
        """Whether an open claim was made by a process of this host (and pid namespace) that is gone."""
        claimers = (_claimer(m) for m in self.replica.population.members if m.claim_open)
        return any(holder is not None and holder.is_gone(here) for holder in claimers)

    def reclaim(self, here: Holder) -> list[Lease]:
        """Drop leases that are stale (see `why_stale`), journaling the end of their claims; end open claims
        that have no lease file and cannot get one. Returns the live leases. Call inside the transaction."""
        live = []
        infos = self.infos()
        for info in infos:
            reason = self.why_stale(info, self.replica.population, here)
            if reason is not None and info.lease is not None:  # judged on a cached read: read it again
                info = LeaseInfo(info.path, Lease.read(info.path), info.age)
                reason = self.why_stale(info, self.replica.population, here)
            if reason is None:
                live.append(info.lease)
                continue
            self._end_claim_of(info, reason, here)
            info.path.unlink(missing_ok=True)  # after the event: a crash between leaves it to reclaim again
            log.warning("reclaimed lease %s: %s", info.path.name, reason)
            self.reaped = True
        self._end_claims_without_lease({lease_member(info.path.name) for info in infos}, here)
        return live

    def _end_claims_without_lease(self, listed: set[int | None], here: Holder) -> None:
        """End open claims that have no lease file, once that cannot be a listing not caught up yet: its
        holder is gone (a worker killed between the claim and its lease file), or the claim is older
        than the lease timeout."""
        now, timeout = time.time(), self.settings.timeout
        for state in self.replica.population.members:
            if not state.claim_open or state.member in listed:
                continue
            holder = _claimer(state)
            age = now - (state.claim_time or now)
            if holder is not None and holder.is_gone(here):
                reason = f"its claim has no lease file and its holder (pid {holder.pid} on this host) is gone"
            elif age > timeout:
                reason = f"its claim has no lease file after {age:.0f} s (timeout {timeout:.0f} s)"
            else:
                continue
            if self._end_claim(state, state.interval, state.token, reason, holder.worker if holder else None, here):
                log.warning("reclaimed the claim of member %d: %s", state.member, reason)
                self.reaped = True

    def _end_claim_of(self, info: LeaseInfo, reason: str, here: Holder) -> None:
        """Journal the end of the claim a reclaimed lease file stood for (found by its file name when its
        content is no lease), if the journal has that claim open."""
        member = info.lease.member if info.lease is not None else lease_member(info.path.name)
        if member is None or not 0 <= member < self.replica.population.size:
            return
        state, lease = self.replica.population.members[member], info.lease
        if lease is None:
            self._end_claim(state, state.interval, state.token, reason, None, here)
        else:
            self._end_claim(state, lease.interval, lease.token, reason, lease.holder.worker, here)

    def _end_claim(self, state: MemberState, interval: int, token: str | None, reason: str, holder: str | None,
                   here: Holder) -> bool:
        """Journal a reclaim ending the claim `token` of `state`'s member, if the journal still has it open."""
        event = Reclaim(member=state.member, interval=interval, token=token, reason=reason, holder=holder,
                        worker=here.worker)
        return self.record(event, lambda: state.token == token and state.claim_open)


def _claimer(state: MemberState) -> Holder | None:
    """The process that made `state`'s latest claim, when the journal recorded its pid."""
    c = state.claim_holder
    return Holder(c.worker, c.host, c.pid, c.pidns) if c is not None and c.pid else None

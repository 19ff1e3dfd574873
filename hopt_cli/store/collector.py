"""The collector: every deletion in the experiment directory, decided from the journal, never a listing alone.

What a commit releases is trashed after it; a sweep (under the lock) trashes unreferenced checkpoints
and orphan staging folders and deletes crash leftovers; the trash is emptied outside the lock.
"""
from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import time
from pathlib import Path

from hopt_cli.recipe import LeaseSettings
from hopt_cli.store.fsio import is_temporary, retrying, touch, unless_gone
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.store.leasetable import LeaseTable
from hopt_cli.store.locking import abandoned_claims
from hopt_cli.store.paths import ExperimentPaths, checkpoint_position, checkpoint_token
from hopt_cli.store.replica import Replica


class Collector:
    """Deletes what nothing in the journal or a lease wants any more."""

    def __init__(self, paths: ExperimentPaths, settings: LeaseSettings, lock_timeout: float, replica: Replica,
                 leases: LeaseTable) -> None:
        self.paths = paths
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.replica = replica
        self.leases = leases
        self._swept: float | None = None  # when (monotonic) our last sweep was

    def sweep(self, live: list[Lease]) -> int:
        """Delete crash leftovers and move garbage to trash/, keeping what the `live` leases use; returns
        how many checkpoints and staging folders went. Call inside the transaction."""
        self._drop_leftovers()
        return self._collect_garbage(live)

    def sweep_due(self) -> bool:
        """Whether to look for what crashed workers left behind (three listings, 11 ms on GlusterFS) though
        we reclaimed nothing: once per lease timeout of this worker, since what a sweep takes must be older
        than that (a staging folder, a temporary file), or was left by a crash that a reclaim finds (the
        checkpoint a dead worker's commit renamed in or released), which sweeps at once."""
        now = time.monotonic()
        if self._swept is None:  # a random phase: workers started together do not all sweep at their first claim
            self._swept = now - random.uniform(0.0, self.settings.timeout)
        if now - self._swept < self.settings.timeout:
            return False
        self._swept = now
        return True

    def _collect_garbage(self, live: list[Lease]) -> int:
        """Move unreferenced checkpoints and orphan staging folders to trash/.

        Nothing in use goes even if the lock ever failed and another worker committed or claimed
        meanwhile: the leases are read again, then the journal (a commit appends its event before it
        drops its lease), and an entry is kept if either still wants it.
        """
        moved = 0
        self._drop_interval_logs()
        candidates = self._unwanted(live)
        if candidates:
            leases = self.leases.live()
            self.replica.sync()
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
        referenced = self.replica.population.referenced_checkpoints()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.paths.interval_logs):
                name = entry.name.removesuffix(".log")
                if entry.name.endswith(".log") and name not in referenced and self.superseded(name):
                    with unless_gone():
                        os.unlink(entry.path)

    def _wanted(self, live: list[Lease]) -> set[str]:
        """Names of checkpoints and staging folders in use: referenced, resumed or trained by an open
        claim of the journal or a lease."""
        population = self.replica.population
        return (population.referenced_checkpoints() | population.open_claims()
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
                 if entry.name not in wanted and self.superseded(entry.name)]
        for entry in os.scandir(self.paths.staging):
            if entry.name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    age = now - retrying(entry.stat, Path(entry.path)).st_mtime
                    if self.replica.population.complete or age > self.settings.timeout:
                        found.append(entry)
        return found

    def superseded(self, name: str) -> bool:
        """Whether the checkpoint `name` (m<member>-i<interval>-<token>) is behind its member in our view."""
        member, interval = checkpoint_position(name)
        members = self.replica.population.members
        return member is None or (0 <= member < len(members) and members[member].interval > interval)

    def collect_released(self, before: set[str]) -> None:
        """Trash the checkpoints the events since `before` left without a reference (the member's previous
        one, a best entry displaced): known from the journal, so no listing is needed."""
        for released in before - self.replica.population.referenced_checkpoints():
            if self.superseded(released):
                self.discard(self.paths.checkpoint(released))
                self.paths.interval_log(released).unlink(missing_ok=True)

    def _drop_leftovers(self) -> None:
        """Delete temporary files and hard-lock claims that crashed writers left behind.

        A temporary file (of a lease, state.json, experiment.yaml, the sbatch script) may be in flight, written
        outside the lock: it is dropped once older than the lease timeout, as are claims of hard-link lockers
        that died waiting.
        """
        now = touch(self.paths.clock)
        old = self.settings.timeout
        for folder in (self.paths.root, self.paths.leases, self.paths.slurm, self.paths.interval_logs):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if not is_temporary(entry.name):
                        continue
                    with unless_gone():
                        if now - entry.stat().st_mtime > old:
                            os.unlink(entry.path)
        for claim in abandoned_claims(self.paths, Holder.this_process("gc"), now, self.lock_timeout):
            claim.unlink(missing_ok=True)

    def discard(self, folder: Path) -> None:
        """Move `folder` (a staging folder, a released checkpoint) to trash/; gone already is fine."""
        with unless_gone():
            os.rename(folder, self.paths.trash / f"{folder.name}.{secrets.token_hex(4)}")

    def empty_trash(self) -> None:
        """Delete what trash/ holds: outside the lock, or while an interval trains."""
        for entry in os.scandir(self.paths.trash):
            shutil.rmtree(entry.path, ignore_errors=True)
            with unless_gone(), contextlib.suppress(IsADirectoryError):
                os.unlink(entry.path)

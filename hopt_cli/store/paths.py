"""Every file name of an experiment directory, in one place; nobody else joins strings into paths."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


def safe_name(name: str) -> str:
    """A name that stays one path component inside the experiment directory."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return cleaned[:100] or "_"


def checkpoint_name(member: int, interval: int, token: str) -> str:
    """A committed checkpoint's folder name; it ends with the token of the lease that trained it."""
    return f"m{member:05d}-i{interval:05d}-{token}"


def checkpoint_token(name: str) -> str:
    return name.rsplit("-", 1)[-1]


def lease_member(name: str) -> int | None:
    """The member a lease file's name (00042.json) stands for; None for another name."""
    match = re.fullmatch(r"(\d+)\.json", name)
    return int(match[1]) if match else None


def checkpoint_position(name: str) -> tuple[int | None, int]:
    """(member, interval) of a checkpoint folder's name; (None, 0) for a name hopt did not give."""
    match = re.fullmatch(r"m(\d+)-i(\d+)-[0-9a-f]+", name)
    return (int(match[1]), int(match[2])) if match else (None, 0)


@dataclass(frozen=True)
class ExperimentPaths:
    """Fixed paths are computed once (cached): a claim and a commit join two dozen of them."""

    root: Path

    @cached_property
    def experiment(self) -> Path:
        return self.root / "experiment.yaml"

    @cached_property
    def lock(self) -> Path:
        return self.root / "lock"

    @cached_property
    def journal(self) -> Path:
        return self.root / "journal.jsonl"

    @cached_property
    def state(self) -> Path:
        return self.root / "state.json"

    @cached_property
    def clock(self) -> Path:
        """Probe file touched under the lock: its mtime is the shared filesystem's 'now'."""
        return self.root / "clock"

    @cached_property
    def leases(self) -> Path:
        return self.root / "leases"

    @cached_property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @cached_property
    def staging(self) -> Path:
        return self.root / "staging"

    @cached_property
    def trash(self) -> Path:
        return self.root / "trash"

    @cached_property
    def logs(self) -> Path:
        return self.root / "logs"

    @cached_property
    def interval_logs(self) -> Path:
        """One log per trained interval, named like its checkpoint and kept while it is (made when needed)."""
        return self.logs / "members"

    @property
    def slurm(self) -> Path:
        """What `hopt slurm` writes: the worker array's sbatch script."""
        return self.root / "slurm"

    @property
    def sbatch_script(self) -> Path:
        return self.slurm / "worker.sbatch"

    @property
    def slurm_log_pattern(self) -> Path:
        """sbatch's --output for an array task: `%A_%a` expands to the name `log()` gives its worker."""
        return self.logs / "slurm-%A_%a.log"

    @property
    def hardlink_lock(self) -> Path:
        """The hard-link lock's name; never `lock`, which the flock kind owns and nobody deletes."""
        return self.root / "lock.link"

    @property
    def hardlink_breaker(self) -> Path:
        """A second hard-link lock, held by whoever removes a stale `hardlink_lock`."""
        return self.root / "lock.link.break"

    def hardlink_claim(self, token: str) -> Path:
        """A would-be holder's unique file, hard-linked to `hardlink_lock` to take the lock."""
        return self.root / f".lock.link-{safe_name(token)}"

    def hardlink_claims(self) -> list[Path]:
        return sorted(self.root.glob(".lock.link-*"))

    def doctor_scratch(self, token: str) -> Path:
        """`hopt doctor`'s probe folder, removed when it is done."""
        return self.root / f".hopt-doctor-{safe_name(token)}"

    @cached_property
    def folders(self) -> tuple[Path, ...]:
        return (self.leases, self.checkpoints, self.staging, self.trash, self.logs)

    def lease(self, member: int) -> Path:
        return self.leases / f"{member:05d}.json"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / safe_name(name)

    def staging_dir(self, token: str) -> Path:
        return self.staging / safe_name(token)

    def log(self, worker: str) -> Path:
        return self.logs / f"{safe_name(worker)}.log"

    def interval_log(self, name: str) -> Path:
        """The output of the interval whose checkpoint is (or would have been) `name`."""
        return self.interval_logs / f"{safe_name(name)}.log"

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

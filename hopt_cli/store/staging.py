"""The staging folders intervals train into, and the checkpoints they resume from, as the worker sees them.

Every look goes through fresh handles after a stale one (ESTALE on a network filesystem), so a
worker never mistakes a transient error for a missing or changed folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hopt_cli.store.digest import FileState, checkpoint_digest, folder_state
from hopt_cli.store.fsio import retrying
from hopt_cli.store.leases import Lease
from hopt_cli.store.paths import ExperimentPaths


@dataclass(frozen=True)
class Staged:
    """What an interval left in its staging folder: whether it holds anything, and its content digest
    (None unless asked for)."""

    empty: bool
    digest: str | None


class Staging:
    """The staging/ folder of one experiment."""

    def __init__(self, paths: ExperimentPaths) -> None:
        self.paths = paths

    def make(self, lease: Lease) -> Path:
        """The new, empty folder `lease`'s interval writes its checkpoint into."""
        folder = self.paths.staging_dir(lease.token)
        folder.mkdir()
        return folder

    def look(self, folder: Path, digest: bool) -> Staged | None:
        """What the trainable left in `folder`, its digest taken if `digest` (outside the lock: reading a
        checkpoint of ~90 MB back costs about 0.1 s); None when the trainable removed the folder."""
        if not retrying(folder.is_dir, folder):
            return None
        empty = not retrying(lambda: any(folder.iterdir()), folder)
        return Staged(empty, retrying(lambda: checkpoint_digest(folder), folder) if digest else None)

    def parent(self, checkpoint: str | None) -> Path | None:
        """The folder of the checkpoint an interval resumes from; None for a fresh start."""
        return None if checkpoint is None else self.paths.checkpoint(checkpoint)

    def state(self, folder: Path) -> tuple[FileState, ...] | None:
        """Every file's name, size and mtime under the checkpoint `folder` (what a write into it changes);
        None when it is missing."""
        if not retrying(folder.is_dir, folder):
            return None
        return retrying(lambda: folder_state(folder), folder)

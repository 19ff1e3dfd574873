"""The staging folders intervals train into, and the checkpoints they resume from, as the worker sees them.

Every look goes through fresh handles after a stale one (ESTALE on a network filesystem), so a
worker never mistakes a transient error for a missing or changed folder.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hopt_cli.store.digest import FileState, checkpoint_digest, folder_state
from hopt_cli.store.fsio import fsync_dir, retrying
from hopt_cli.store.leases import Lease
from hopt_cli.store.paths import ExperimentPaths, checkpoint_name

log = logging.getLogger("hopt")


class Staging:
    """The staging/ folder of one experiment."""

    def __init__(self, paths: ExperimentPaths) -> None:
        self.paths = paths

    def make(self, lease: Lease) -> Path:
        """The new, empty folder `lease`'s interval writes its checkpoint into."""
        folder = self.paths.staging_dir(lease.token)
        folder.mkdir()
        return folder

    def present(self, folder: Path) -> bool:
        """Whether `folder` is there: a staging folder (a trainable may remove ctx.out, which it must not),
        or the checkpoint an interval resumes from."""
        return retrying(folder.is_dir, folder)

    def empty(self, folder: Path) -> bool:
        """Whether the trainable wrote nothing into the staging `folder`."""
        return not retrying(lambda: any(folder.iterdir()), folder)

    def digest(self, folder: Path) -> str:
        """The content digest of the checkpoint in `folder`, taken outside the lock: reading a checkpoint
        of ~90 MB back costs about 0.1 s."""
        return retrying(lambda: checkpoint_digest(folder), folder)

    def parent(self, checkpoint: str | None) -> Path | None:
        """The folder of the checkpoint an interval resumes from; None for a fresh start."""
        return None if checkpoint is None else self.paths.checkpoint(checkpoint)

    def state(self, folder: Path) -> tuple[FileState, ...]:
        """Every file's name, size and mtime under the checkpoint `folder`: what a write into it changes."""
        return retrying(lambda: folder_state(folder), folder)

    def publish(self, lease: Lease, folder: Path) -> str | None:
        """Rename `lease`'s staging `folder` into checkpoints/ under its final name, durably, before the commit
        takes the lock; None when the folder was collected while it trained (our claim was ended).

        Until its commit names it, the checkpoint is kept by every sweep (its member has not moved past its
        interval); a commit that finds its token fenced off trashes it."""
        name = checkpoint_name(lease.member, lease.interval, lease.token)
        try:
            os.rename(folder, self.paths.checkpoint(name))
        except FileNotFoundError:  # collected as an orphan (a lock that did not exclude, a stale listing)
            log.warning("%s was collected while its interval trained; the interval is discarded", folder)
            return None
        fsync_dir(self.paths.checkpoints)
        return name

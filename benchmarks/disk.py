"""Checkpoints on disk while an experiment runs, sampled from outside by a thread.

The bound: a member's latest checkpoint each, the `keep_best` best, one parent per live lease (an
exploit in flight pins its parent even after the parent member moves on), and SLACK more: during a
commit the new checkpoint is published before the one it replaces is moved to trash in the same
critical section, and a worker killed between publishing and recording leaves one orphan until the
next commit collects it.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from hopt_cli.store.paths import ExperimentPaths

SLACK = 2
EVERY = 0.002  # seconds between samples, by default


@dataclass(frozen=True)
class DiskSample:
    checkpoints: int
    leases: int  # the larger of two counts taken around the checkpoint count, so races only widen the bound
    staging: int
    trash: int


def _count(folder: Path, suffix: str = "") -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(suffix) and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


@dataclass
class DiskWatch:
    """`with DiskWatch(root) as watch:` samples `root` until the block ends."""

    root: Path
    every: float = EVERY
    samples: list[DiskSample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._paths = ExperimentPaths(Path(self.root))
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.every):
            p = self._paths
            leases = _count(p.leases, ".json")
            checkpoints = _count(p.checkpoints)
            leases = max(leases, _count(p.leases, ".json"))
            self.samples.append(DiskSample(checkpoints, leases, _count(p.staging), _count(p.trash)))

    def excess(self, population: int, keep_best: int) -> int:
        """The most checkpoints ever seen beyond population + live leases + keep_best (≤ SLACK if bounded)."""
        return max((s.checkpoints - s.leases - population - keep_best for s in self.samples), default=0)

    @property
    def most(self) -> int:
        return max((s.checkpoints for s in self.samples), default=0)

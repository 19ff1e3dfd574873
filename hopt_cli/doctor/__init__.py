"""`hopt doctor`: does the filesystem under an experiment directory give hopt what it relies on?

Each check runs for real in a scratch folder inside the directory (removed afterwards) and gives one
pass/fail line: the filesystem's type and what it means for the lock kinds, hard links, lock exclusion
between two processes of this host, atomic replace, fsync, clock skew between this host and the
filesystem, free space (local.py). Every wait is short and bounded: a check that cannot finish says so in
seconds.

What one host cannot see, `--peer` tests: run on two nodes at once (`srun -N2 hopt doctor --peer --dir
D`), the two meet in a folder of D (meeting.py) and test whether each lock kind excludes across them,
whether an append made under the lock is read once the lock has changed hands, how soon a new file shows
in the other node's listing and a replaced file's new content in its reads (peer.py). It ends with the
lock kind to use.
"""
from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from hopt_cli.doctor.local import (Advice, Check, atomic_replace, clock_skew, filesystem, free_space, fsync_works,
                                   hard_links, lock_exclusion)
from hopt_cli.doctor.peer import across_nodes
from hopt_cli.errors import HoptError
from hopt_cli.store import Store
from hopt_cli.store.paths import ExperimentPaths


def diagnose(root: Path, lock_kind: str | None, min_free_gb: float,
             peer_timeout: float | None = None) -> Iterator[Check | Advice]:
    """Run every check in a scratch folder under `root`, yielding each line as soon as it is known.

    `lock_kind` is --lock; None: the experiment's, when `root` holds one, else none, and the probe of this
    host's lock then tests flock, hopt's default. With `peer_timeout` (--peer), meet another `hopt doctor
    --peer` and test both lock kinds across the two nodes instead of between two processes of this host.
    HoptError if `root` cannot be used at all.
    """
    if not root.is_dir():
        raise HoptError(f"{root} is not a directory; create it, or give an experiment's --dir")
    if lock_kind is None and ExperimentPaths(root).experiment.is_file():
        lock_kind = Store.open(root).recipe.lock
    peer = peer_timeout is not None
    kind = lock_kind if peer else lock_kind or "flock"
    with _scratch(root) as scratch:
        paths = ExperimentPaths(scratch)
        paths.clock.touch()
        yield filesystem(root, kind)
        yield hard_links(scratch)
        if not peer:
            yield lock_exclusion(paths, kind or "flock")
        yield atomic_replace(scratch)
        yield fsync_works(scratch)
        yield clock_skew(paths.clock)
        yield free_space(root, min_free_gb)
        if peer:
            yield from across_nodes(root, paths.clock, peer_timeout)


@contextlib.contextmanager
def _scratch(root: Path) -> Iterator[Path]:
    """A new folder under `root` for the checks, removed with everything in it afterwards."""
    scratch = ExperimentPaths(root).doctor_scratch(secrets.token_hex(4))
    try:
        scratch.mkdir()
    except OSError as err:
        raise HoptError(f"cannot write in {root}: {err.strerror}; check the directory's permissions") from None
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

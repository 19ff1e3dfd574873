"""The second process of `hopt doctor`'s lock check on one host (local.lock_exclusion): it says on stdout
whether it got the lock while the doctor held it, and whether it got it once released."""
from __future__ import annotations

import sys
from pathlib import Path

from hopt_cli.doctor.local import LOCK_SECONDS, TRY_SECONDS
from hopt_cli.errors import HoptError, LockTimeout
from hopt_cli.store.locking import make_lock
from hopt_cli.store.paths import ExperimentPaths


def probe_lock(root: Path, kind: str) -> None:
    """Say 'busy' or 'took' while the doctor holds the lock, then 'took' or 'timeout' once it let go."""
    paths = ExperimentPaths(root)
    try:
        try:
            with make_lock(kind, paths, timeout=TRY_SECONDS):
                print("took", flush=True)
        except LockTimeout:
            print("busy", flush=True)
        try:
            with make_lock(kind, paths, timeout=LOCK_SECONDS):
                print("took", flush=True)
        except LockTimeout:
            print("timeout", flush=True)
    except (HoptError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", flush=True)


if __name__ == "__main__":
    probe_lock(Path(sys.argv[1]), sys.argv[2])

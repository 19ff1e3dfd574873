"""`hopt doctor`: does the filesystem under an experiment directory give hopt what it relies on?

Each check runs for real in a scratch folder inside the directory (removed afterwards) and gives one
pass/fail line: lock exclusion between two processes, atomic replace, fsync, clock skew between this
host and the filesystem, free space.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.errors import HoptError
from hopt_cli.store.fsio import fsync_dir, touch, write_atomic
from hopt_cli.store.locking import LockTimeout, make_lock
from hopt_cli.store.paths import ExperimentPaths

MAX_SKEW_SECONDS = 5.0
PROBE_TIMEOUT = 60.0  # seconds for the lock probe process to answer


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def diagnose(root: Path, lock_kind: str, min_free_gb: float) -> list[Check]:
    """Run every check in a scratch folder under `root`; HoptError if `root` cannot be used at all."""
    if not root.is_dir():
        raise HoptError(f"{root} is not a directory; create it, or give an experiment's --dir")
    scratch = ExperimentPaths(root).doctor_scratch(secrets.token_hex(4))
    try:
        scratch.mkdir()
    except OSError as err:
        raise HoptError(f"cannot write in {root}: {err.strerror}; check the directory's permissions") from None
    try:
        paths = ExperimentPaths(scratch)
        paths.clock.touch()
        return [lock_exclusion(paths, lock_kind), atomic_replace(scratch), fsync_works(scratch),
                clock_skew(paths.clock), free_space(root, min_free_gb)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def lock_exclusion(paths: ExperimentPaths, kind: str) -> Check:
    """While we hold the lock another process must not get it, and must get it once we let go."""
    name = f"lock exclusion ({kind}, two processes on this host)"
    with make_lock(kind, paths):
        probe = subprocess.Popen([sys.executable, "-m", "hopt_cli.doctor", str(paths.root), kind],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while_held = probe.stdout.readline().strip()
        except BaseException:
            probe.kill()
            raise
    try:
        after = probe.stdout.readline().strip()
        _, errors = probe.communicate(timeout=PROBE_TIMEOUT)
    finally:
        probe.kill()
        probe.wait()
    if while_held == "took":
        fix = "set `lock: hardlink` in the recipe" if kind == "flock" else "this filesystem cannot host hopt"
        return Check(name, False, f"a second process took the lock while this one held it; {fix}")
    if (while_held, after) != ("busy", "took"):
        problem = " ".join(errors.split())[-300:] or "no answer"
        return Check(name, False, f"the second process could not test the lock ({problem})")
    return Check(name, True, "a second process waited while the lock was held and took it once released")


def _probe_lock(root: Path, kind: str) -> None:
    """The other process of `lock_exclusion`: report 'busy' or 'took', then wait for the lock."""
    paths = ExperimentPaths(root)
    try:
        with make_lock(kind, paths, timeout=0.5):
            print("took", flush=True)
    except LockTimeout:
        print("busy", flush=True)
    with make_lock(kind, paths, timeout=PROBE_TIMEOUT):
        print("took", flush=True)


def atomic_replace(scratch: Path) -> Check:
    """os.replace must swap the whole file: an open reader keeps the old one, a new reader sees the new."""
    name = "atomic replace"
    target = scratch / "replace"
    try:
        write_atomic(target, b"old")
        with open(target, "rb") as reader:
            write_atomic(target, b"new")
            kept = reader.read()
        seen = target.read_bytes()
        leftovers = sorted(p.name for p in scratch.iterdir() if p.name.startswith(".replace"))
    except OSError as err:
        return Check(name, False, f"{err}")
    if (kept, seen, leftovers) != (b"old", b"new", []):
        return Check(name, False, f"an open reader saw {kept!r}, a new one {seen!r}, temp files left: {leftovers}")
    return Check(name, True, "an open reader kept the old file, a new reader saw the new one")


def fsync_works(scratch: Path) -> Check:
    name = "fsync"
    started = time.perf_counter()
    try:
        fd = os.open(scratch / "fsync", os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(scratch)
    except OSError as err:
        return Check(name, False, f"{err}; hopt cannot make its writes durable here")
    return Check(name, True, f"a file and its folder in {1e3 * (time.perf_counter() - started):.1f} ms")


def clock_skew(probe: Path) -> Check:
    """Compare the filesystem's clock (a freshly touched file's mtime) with this host's."""
    name = "clock skew"
    skew = touch(probe) - time.time()
    detail = f"the filesystem's clock is {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} this host's"
    if abs(skew) > MAX_SKEW_SECONDS:
        return Check(name, False, f"{detail} (limit {MAX_SKEW_SECONDS:g} s); lease ages use the filesystem's "
                                  "clock and stay right, but journal times and logs will disagree: fix NTP")
    return Check(name, True, detail)


def free_space(root: Path, min_free_gb: float) -> Check:
    name = "free space"
    free = shutil.disk_usage(root).free / 2**30
    detail = f"{free:.1f} GiB free (at least {min_free_gb:g} GiB wanted)"
    return Check(name, free >= min_free_gb, detail + ("" if free >= min_free_gb else "; free some space"))


if __name__ == "__main__":
    _probe_lock(Path(sys.argv[1]), sys.argv[2])

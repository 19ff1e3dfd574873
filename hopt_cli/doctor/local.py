"""The checks `hopt doctor` makes on one host: the filesystem's type, hard links, the lock between two
processes of this host, atomic replace, fsync, clock skew and free space."""
from __future__ import annotations

import errno
import os
import secrets
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.errors import HoptError, LockTimeout
from hopt_cli.store.filesystems import RUN_ON_TWO_NODES, flock_problem, judge
from hopt_cli.store.fsio import fsync_dir, read_bytes, touch, write_atomic
from hopt_cli.store.locking import ExperimentLock, make_lock
from hopt_cli.store.mounts import mount_of
from hopt_cli.store.paths import ExperimentPaths

MAX_SKEW_SECONDS = 5.0
LOCK_SECONDS = 10.0  # to take a lock that nobody else uses, or one just released: far more than either needs
TRY_SECONDS = 0.5  # how long a second process tries to take a lock that is held (it must not get it)
ANSWER_SECONDS = LOCK_SECONDS + 5.0  # for the lock probe process to say what it got


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class Advice:
    """A closing line that is no check of its own: what to do, given the checks before it."""

    text: str
    ok: bool = True

    def line(self) -> str:
        return self.text


def filesystem(root: Path, kind: str | None) -> Check:
    """The filesystem's type, mount point and source, with what they mean for the lock kinds.

    FAIL only when the lock kind in use (`kind`; None: none chosen yet) is known not to exclude there.
    """
    name = "filesystem"
    mount = mount_of(root)
    if mount is None:
        return Check(name, True, f"unknown (no /proc/self/mountinfo here): {RUN_ON_TWO_NODES}")
    verdict = judge(mount)
    return Check(name, not (kind == "flock" and verdict.flock is False),
                 f"{mount.fstype} at {mount.point} ({mount.source}): {verdict.advice}")


def hard_links(scratch: Path) -> Check:
    """link() must make a second name for a file, and fail (EEXIST) onto a name that is taken.

    hopt creates files exclusively that way (experiment.yaml), and the hard-link lock is a link() that
    succeeds. Link counts and inode numbers are reported as seen: on sshfs st_nlink stays 1 and each
    name has its own inode number, which is why hopt never consults them.
    """
    name = "hard links"
    token = secrets.token_hex(8).encode()
    first, second, third = scratch / "link-1", scratch / "link-2", scratch / "link-3"
    try:
        write_atomic(first, token)
        write_atomic(third, b"another")
        os.link(first, second)
        seen = read_bytes(second)
        counts, inodes = zip(*((s.st_nlink, s.st_ino) for s in (os.stat(first), os.stat(second))))
    except OSError as err:
        return Check(name, False, f"link() fails here ({err.strerror or err}): hopt needs it to create files "
                                  "exclusively (experiment.yaml) and for `lock: hardlink`")
    try:
        os.link(third, second)
        taken = "succeeded"
    except OSError as err:
        taken = "" if err.errno == errno.EEXIST else f"failed with {err.strerror}, not EEXIST"
    if seen != token:
        return Check(name, False, f"the second name reads {seen!r}, not what the first holds ({token!r})")
    if taken:
        return Check(name, False, f"a link() onto a name that is taken {taken}: the hard-link lock cannot work here")
    shared = "share one inode" if inodes[0] == inodes[1] else "have different inode numbers"
    return Check(name, True, f"link() made a second name with the same content and failed onto a taken name; "
                             f"st_nlink reads {counts[1]} and the two names {shared} (hopt's hard-link lock never "
                             "relies on link counts or inode numbers)")



# -------------------------------------------------------------------------- the lock, on this host

def lock_exclusion(paths: ExperimentPaths, kind: str) -> Check:
    """While we hold the lock another process must not get it, and must get it once we let go.

    Both processes run on this host and see the filesystem through one mount: across nodes, only
    `--peer` can tell. Every wait is bounded (LOCK_SECONDS), so a lock that cannot work here fails in
    seconds with what happened, not after a worker's ten-minute timeout.
    """
    name = f"lock exclusion ({kind}, two processes on this host)"
    lock = make_lock(kind, paths, timeout=LOCK_SECONDS)
    problem = _acquire(lock, paths.root)
    if problem is not None:
        return Check(name, False, problem)
    try:
        probe = subprocess.Popen([sys.executable, "-m", "hopt_cli.doctor.probe", str(paths.root), kind],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            answers = _Answers(probe)
            while_held = answers.next(ANSWER_SECONDS)
        except BaseException:
            _end(probe)
            raise
    finally:
        lock.__exit__(None, None, None)
    try:
        after = answers.next(ANSWER_SECONDS) if while_held == "busy" else None
    finally:
        errors = _end(probe)
    if while_held == "took":
        fix = "set `lock: hardlink` in the recipe" if kind == "flock" else "this filesystem cannot host hopt"
        return Check(name, False, f"a second process took the lock while this one held it; {fix}")
    if while_held == "busy" and after == "timeout":
        return Check(name, False, f"the second process could not take the lock within {LOCK_SECONDS:g} s of its "
                                  f"release: the {kind} lock does not work on this filesystem")
    if (while_held, after) != ("busy", "took"):
        said = next((a for a in (after, while_held) if a and a.startswith("error: ")), None)
        problem = said[len("error: "):] if said else " ".join(errors.split())[-300:] or (
            f"no answer within {ANSWER_SECONDS:g} s")
        return Check(name, False, f"the second process could not test the lock ({problem})")
    return Check(name, True, "a second process waited while the lock was held and took it once released; "
                             f"between processes of this host only: {RUN_ON_TWO_NODES}")


def _acquire(lock: ExperimentLock, folder: Path) -> str | None:
    """Take `lock` (held on return); or why it could not be taken, in words."""
    try:
        lock.__enter__()
    except LockTimeout:
        return (f"could not take a {lock.kind} lock that nothing else uses within {lock.timeout:g} s: it does not "
                "work on this filesystem (see the hard links line)" if lock.kind == "hardlink" else
                f"could not take a {lock.kind} lock that nothing else uses within {lock.timeout:g} s")
    except HoptError as err:
        problem = flock_problem(folder) if lock.kind == "flock" else None
        return f"hopt refuses it here: {problem}; use `lock: hardlink`" if problem else f"{err}"
    except OSError as err:
        return f"the lock fails here: {err}"
    return None


class _Answers:
    """Lines from a child's stdout, each awaited for a bounded time: a hung filesystem must not hang doctor."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.fd = process.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str | None:
        """The next line, stripped; None at the end of the output or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace").strip()


def _end(process: subprocess.Popen) -> str:
    """Kill and reap `process`; what it wrote on stderr."""
    process.kill()
    try:
        _, errors = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        return ""
    return errors.decode(errors="replace")



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

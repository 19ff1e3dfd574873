"""`hopt doctor`: does the filesystem under an experiment directory give hopt what it relies on?

Each check runs for real in a scratch folder inside the directory (removed afterwards) and gives one
pass/fail line: the filesystem's type and what it means for the lock kinds, hard links, lock exclusion
between two processes of this host, atomic replace, fsync, clock skew between this host and the
filesystem, free space. Every wait is short and bounded: a check that cannot finish says so in seconds.

What one host cannot see, `--peer` tests: run on two nodes at once (`srun -N2 hopt doctor --peer --dir
D`), the two meet in a folder of D and test whether each lock kind excludes across them, whether an
append made under the lock is read once the lock has changed hands, how soon a new file shows in the
other node's listing and a replaced file's new content in its reads. It ends with the lock kind to use.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hopt_cli.errors import HoptError, LockTimeout
from hopt_cli.recipe import LOCK_KINDS
from hopt_cli.store.fsio import append_line, create_exclusive, fsync_dir, read_bytes, touch, write_atomic
from hopt_cli.store import Store
from hopt_cli.store.locking import ExperimentLock, HardLinkLock, KernelFlock, make_lock
from hopt_cli.store.mounts import Mount, flock_problem, mount_of
from hopt_cli.store.paths import ExperimentPaths

MAX_SKEW_SECONDS = 5.0
LOCK_SECONDS = 10.0  # to take a lock that nobody else uses, or one just released: far more than either needs
TRY_SECONDS = 0.5  # how long a second process tries to take a lock that is held (it must not get it)
ANSWER_SECONDS = LOCK_SECONDS + 5.0  # for the lock probe process to say what it got
PEER_TIMEOUT = 60.0  # default of --peer-timeout: how long to wait for the other node to show up
RUN_ON_TWO_NODES = "run `hopt doctor --peer --dir D` on two nodes at once to test across nodes"

LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay", "f2fs", "bcachefs",
                         "ramfs", "jfs", "reiserfs"})
AT_ONCE = 0.05  # seconds: a delay below this is reported as "at once"
SLOW = 2.0  # seconds: a delay above this gets an explanation


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


# ------------------------------------------------------------------------------------ the filesystem

@dataclass(frozen=True)
class Verdict:
    """What a filesystem type means for hopt: whether flock excludes across nodes (None: not known)."""

    flock: bool | None
    advice: str


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


def judge(mount: Mount) -> Verdict:
    """The advice for a mount, by its type and options (as /proc/self/mountinfo gives them)."""
    fstype, options = mount.fstype, set(mount.options.split(","))
    if fstype in LOCAL_TYPES:
        return Verdict(True, "a local filesystem: workers on other nodes cannot share it, so this is for workers "
                             "on this machine only (either lock kind works)")
    if fstype == "fuse.sshfs":
        return Verdict(False, "flock does not exclude across sshfs mounts (SFTP has no locks: each mount locks "
                              "only in its own kernel), so workers on two nodes could both hold it; use "
                              "`lock: hardlink`. sshfs also caches listings and attributes (20 s by default; "
                              "-o dir_cache=no turns its cache off)")
    if fstype in ("fuse.glusterfs", "glusterfs"):
        return Verdict(True, "flock excludes across GlusterFS clients (the bricks hold the locks): either lock "
                             "kind works; a client caches attributes and entries for about 1 s, which hopt "
                             "revalidates (fresh opens, a setattr under the lock)")
    if fstype in ("nfs", "nfs4"):
        return _nfs(options)
    if fstype == "lustre":
        return _lustre(options)
    if fstype == "gpfs":
        return Verdict(True, "GPFS (IBM Storage Scale) honours flock across the nodes of its cluster: either "
                             "lock kind works")
    if fstype == "beegfs":
        return _beegfs(options)
    if fstype in ("ceph", "fuse.ceph-fuse", "fuse.ceph"):
        return Verdict(True, "CephFS's metadata servers coordinate flock across clients: either lock kind works")
    return Verdict(None, f"hopt knows nothing about {fstype}, so whether flock excludes across nodes is "
                         f"untested: {RUN_ON_TWO_NODES}")


def _nfs(options: set[str]) -> Verdict:
    """NFS: flock is the lock manager's (it excludes across clients) unless the mount keeps it local."""
    local = sorted(options & {"local_lock=all", "local_lock=flock", "nolock"})
    if local:
        return Verdict(False, f"mounted with {local[0]}: flock locks only on this client, so workers on two nodes "
                              "could both hold it; use `lock: hardlink` (or remount without it)")
    return Verdict(True, "flock is backed by the NFS lock manager (NLM for NFSv3, the protocol's own locks for "
                         "NFSv4) and excludes across clients: either lock kind works, as long as the lock "
                         "service answers")


def _lustre(options: set[str]) -> Verdict:
    """Lustre: flock is coherent across clients only with the `flock` mount option."""
    if "flock" in options:
        return Verdict(True, "mounted with -o flock: flock is coherent across clients: either lock kind works")
    if "localflock" in options:
        return Verdict(False, "mounted with -o localflock: flock locks only on this client, so workers on two "
                              "nodes could both hold it; use `lock: hardlink` (or remount with -o flock)")
    return Verdict(False, "mounted without -o flock: flock() fails (noflock) or locks only on this client; use "
                          "`lock: hardlink` (or remount with -o flock)")


def _beegfs(options: set[str]) -> Verdict:
    """BeeGFS: flock is local to each client unless its config sets tuneUseGlobalFileLocks = true."""
    config = next((o.split("=", 1)[1] for o in options if o.startswith("cfgFile=")), "/etc/beegfs/beegfs-client.conf")
    try:
        settings = {key.strip(): value.strip().lower() for key, _, value in
                    (line.split("#", 1)[0].partition("=") for line in Path(config).read_text().splitlines())}
    except OSError as err:
        seen = f"cannot read {config} ({err.strerror})"
    else:
        if settings.get("tuneUseGlobalFileLocks") == "true":
            return Verdict(True, f"{config} sets tuneUseGlobalFileLocks = true, so flock excludes across clients "
                                 "(if every node's client config does): either lock kind works")
        seen = f"{config} does not set it"
    return Verdict(False, "BeeGFS clients keep flock local unless beegfs-client.conf sets "
                          f"tuneUseGlobalFileLocks = true ({seen}); use `lock: hardlink`, or set it on every node")


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
        probe = subprocess.Popen([sys.executable, "-m", "hopt_cli.doctor", str(paths.root), kind],
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


def _probe_lock(root: Path, kind: str) -> None:
    """The other process of `lock_exclusion`: 'busy' or 'took' while held, then 'took' or 'timeout' after."""
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


# ------------------------------------------------------------------------------ across two nodes

BUCKET_SECONDS = 10  # peer sessions are named after the filesystem's clock, in buckets this long
CLOCK_SLACK = 20.0  # seconds the two nodes' clocks may differ by and still meet
OLD_SESSION = 600.0  # seconds: a session folder this much older than any that may be waiting is removed
SCAN_SECONDS = 0.1  # between looks for the other node while meeting
POLL_SECONDS = 0.01  # between reads while waiting for the other node's next word, or for a change to show
WELCOME_SECONDS = 5.0  # a host welcomes its guest within this, or the guest takes it for dead and looks on
BYE_SECONDS = 5.0  # the host waits this long for its guest's goodbye before it removes their session folder
STEP_SECONDS = 30.0  # the other node's share of a step, besides the waits the step itself has
APPEND_SECONDS = 5.0  # for an append to show after the lock changed hands (and a setattr)
LISTING_SECONDS = 30.0  # for a new file to show in the other node's listing (sshfs caches listings for 20 s)
REPLACE_SECONDS = 10.0  # for a replaced file's new content to show in the other node's reads
ROLES = ("host", "guest")


class NoPeer(Exception):
    """Nobody else ran `hopt doctor --peer` on this directory in time."""


class PeerLost(Exception):
    """The other node did not say the next step in time (deliberately no HoptError: never a check's error)."""


@dataclass(frozen=True)
class Node:
    """One side of a --peer run, as the other side learns it."""

    host: str
    pid: int
    dir: str  # the experiment directory, as this node names it
    fstype: str

    @classmethod
    def here(cls, root: Path) -> Node:
        mount = mount_of(root)
        return cls(socket.gethostname(), os.getpid(), str(root), mount.fstype if mount else "unknown")

    @classmethod
    def read(cls, path: Path) -> Node | None:
        """The node a session file names; None while it is not there (or is not one)."""
        data = _read_json(path)
        try:
            return cls(str(data["host"]), int(data["pid"]), str(data["dir"]), str(data["fstype"]))
        except (TypeError, KeyError, ValueError):
            return None


class Channel:
    """The two nodes' conversation, in their session folder.

    A node says a step by creating `<step>.<role>` there with link() (so the file appears whole), once:
    no name is ever written twice, so the other node, polling for it by name, reads it fresh or not at
    all, whatever its client caches (a listing can be 20 s stale on sshfs, and a name deleted there can
    still show for as long). Each kind of lock under test lives in the folder too.
    """

    def __init__(self, folder: Path, role: str, nodes: dict[str, Node]) -> None:
        self.folder, self.role, self.nodes = folder, role, nodes
        self.other = ROLES[1 - ROLES.index(role)]
        same_host = nodes["host"].host == nodes["guest"].host
        self.names = {r: f"{n.host} (pid {n.pid})" if same_host else n.host for r, n in nodes.items()}

    def say(self, step: str, data: dict[str, Any]) -> None:
        create_exclusive(self.folder / f"{step}.{self.role}", json.dumps(data).encode())

    def hear(self, step: str, timeout: float) -> dict[str, Any]:
        """What the other node said at `step`; PeerLost if it says nothing within `timeout` seconds."""
        path = self.folder / f"{step}.{self.other}"
        deadline = time.monotonic() + timeout
        while True:
            data = _read_json(path)
            if data is not None:
                return data
            if time.monotonic() > deadline:
                raise PeerLost(f"waited {timeout:g} s for its {step!r}")
            time.sleep(POLL_SECONDS)

    def lock(self, kind: str, timeout: float) -> ExperimentLock:
        """The lock of `kind` that both nodes test; flock without hopt's refusal of known filesystems."""
        if kind == "flock":
            return KernelFlock(self.folder / "flock", timeout)
        return HardLinkLock(ExperimentPaths(self.folder / "hardlink"), timeout)

    def leave(self) -> None:
        """The guest says goodbye; the host waits for that (briefly), then removes the session folder."""
        if self.role == "guest":
            with contextlib.suppress(OSError):
                self.say("bye", {})
            return
        with contextlib.suppress(PeerLost):
            self.hear("bye", BYE_SECONDS)
        shutil.rmtree(self.folder, ignore_errors=True)


def across_nodes(root: Path, clock: Path, timeout: float) -> Iterator[Check | Advice]:
    """The --peer checks: meet the other node, test both lock kinds, appends, listings and replaces with
    it, and say which lock kind to use. Both nodes print the same lines for what they tested together."""
    me = Node.here(root)
    print(f"hopt doctor: waiting up to {timeout:g} s for `hopt doctor --peer` on another node", file=sys.stderr,
          flush=True)
    started = time.monotonic()
    try:
        channel = meet(root, clock, me, timeout)
    except NoPeer:
        yield Check("peer", False, f"no peer showed up in {timeout:g} s: start `hopt doctor --peer --dir D` on "
                                   "another node at the same time (e.g. `srun -N2 hopt doctor --peer --dir D`)")
        return
    other = channel.nodes[channel.other]
    same_host = me.host == other.host
    where = f"{other.dir} on {other.fstype}"
    if same_host:
        yield Check("peer", False, f"met pid {other.pid} ({where}) on this same host {me.host}: nothing here "
                                   "crosses nodes; start the two on different nodes (e.g. `srun -N2 ...`)")
    else:
        yield Check("peer", True, f"{me.host} ({me.dir}) met {other.host} ({where}) after "
                                  f"{time.monotonic() - started:.1f} s")
    excludes: dict[str, bool] = {}
    try:
        for kind in LOCK_KINDS:
            rounds = {holder: lock_round(channel, kind, holder) for holder in ROLES}
            exclusion = exclusion_check(kind, rounds, channel.names)
            excludes[kind] = exclusion.ok
            yield exclusion
            yield append_check(kind, rounds, channel.names)
        yield listing_check(listing_test(channel), channel.names)
        yield replace_check(replace_test(channel), channel.names)
    except PeerLost as lost:
        yield Check("peer", False, f"{channel.names[channel.other]} stopped answering ({lost}); the checks after "
                                   "this one did not run")
    finally:
        channel.leave()
    if len(excludes) == len(LOCK_KINDS):
        yield recommendation(excludes, me.host if same_host else None)


def recommendation(excludes: dict[str, bool], one_host: str | None) -> Advice:
    """The lock kind to use: flock when it excludes across the nodes (the kernel releases it when its
    holder dies), else hardlink when that does."""
    if one_host is not None:
        return Advice(f"no lock kind recommended: both processes ran on {one_host}")
    if excludes.get("flock"):
        return Advice("use lock: flock (it excludes across these nodes, and the kernel releases it when its "
                      "holder dies)")
    if excludes.get("hardlink"):
        return Advice("use lock: hardlink (flock does not exclude across these nodes)")
    return Advice("no lock kind excludes across these nodes: they cannot share an experiment directory here",
                  ok=False)


# How the two meet. Listings may be stale for 20 s (sshfs) and flock may not exclude, so they meet by
# names they can both compute and that are created once: session folders named after the filesystem's
# clock, which only ever moves on.

def meet(root: Path, clock: Path, me: Node, timeout: float) -> Channel:
    """Find the other node: join a session another node hosts, or host one and wait for a guest.

    A host makes a session folder `.hopt-doctor-peer-<bucket>-<n>` (bucket: the filesystem's clock in
    BUCKET_SECONDS; mkdir decides between two would-be hosts), sets it up and writes `host`; a guest
    joins by creating `guest` with link(), which only one can, and the host welcomes it. Two nodes that
    both started hosting meet too: the host of the younger session closes it (by taking its `guest`
    name itself, unless a guest was faster) and joins the older one. A guest whose host does not
    welcome it within WELCOME_SECONDS (it died) looks on. NoPeer after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    _remove_old_sessions(root, touch(clock), timeout)
    mine: tuple[tuple[int, int], Path] | None = None
    closed: list[Path] = []  # our sessions given up for an older one: removed once we met (or gave up)
    try:
        while True:
            now = touch(clock)
            for key, folder in _sessions(root, now, timeout):
                if mine is not None and key >= mine[0]:
                    break
                host = Node.read(folder / "host")
                if host is None or _exists(folder / "guest"):
                    continue
                if mine is not None:
                    if not _close(mine[1]):
                        return _welcome(mine[1], me)  # a guest came meanwhile
                    closed.append(mine[1])
                    mine = None
                channel = _join(folder, me, host)
                if channel is not None:
                    return channel
            if mine is None:
                mine = _host(root, _bucket(now), me)
            elif _exists(mine[1] / "guest"):
                return _welcome(mine[1], me)
            if time.monotonic() > deadline:
                if mine is not None and not _close(mine[1]):
                    return _welcome(mine[1], me)
                raise NoPeer()
            time.sleep(SCAN_SECONDS)
    except BaseException:
        if mine is not None:  # nobody may join a session whose host has gone
            _close(mine[1])
            closed.append(mine[1])
        raise
    finally:
        for folder in closed:
            shutil.rmtree(folder, ignore_errors=True)


def _bucket(clock: float) -> int:
    return int(clock // BUCKET_SECONDS)


def _session(root: Path, bucket: int, n: int) -> Path:
    return ExperimentPaths(root).doctor_scratch(f"peer-{bucket}-{n}")


def _sessions(root: Path, now: float, timeout: float) -> Iterator[tuple[tuple[int, int], Path]]:
    """Session folders that may still wait for a guest, oldest first: those of the buckets the clock
    passed through in the last `timeout` seconds, give or take CLOCK_SLACK (another node's clock)."""
    for bucket in range(_bucket(now - timeout - CLOCK_SLACK), _bucket(now + CLOCK_SLACK) + 1):
        for n in itertools.count():
            folder = _session(root, bucket, n)
            if not _exists(folder):
                break
            yield (bucket, n), folder


def _host(root: Path, bucket: int, me: Node) -> tuple[tuple[int, int], Path]:
    """Make a new session folder in `bucket`, with what the tests need, and say who hosts it."""
    for n in itertools.count():
        folder = _session(root, bucket, n)
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        (folder / "flock").touch()
        (folder / "hardlink").mkdir()
        (folder / "hardlink" / "clock").touch()
        for role in ROLES:
            (folder / f"listing-{role}").mkdir()
        for kind in LOCK_KINDS:
            append_line(folder / f"appended-{kind}", b"first\n")
        create_exclusive(folder / "host", json.dumps(asdict(me)).encode())
        return (bucket, n), folder
    raise AssertionError("unreachable")


def _close(folder: Path) -> bool:
    """Take our session's `guest` name ourselves, so that nobody joins it; False if a guest was faster."""
    try:
        return create_exclusive(folder / "guest", json.dumps({"closed": True}).encode())
    except OSError:
        return True


def _join(folder: Path, me: Node, host: Node) -> Channel | None:
    """Become the guest of the session in `folder`; None if another was faster or its host is gone."""
    try:
        if not create_exclusive(folder / "guest", json.dumps(asdict(me)).encode()):
            return None
    except OSError:
        return None
    channel = Channel(folder, "guest", {"host": host, "guest": me})
    try:
        channel.hear("welcome", WELCOME_SECONDS)
    except PeerLost:
        return None
    return channel


def _welcome(folder: Path, me: Node) -> Channel:
    """Our session's guest has come: learn who it is and welcome it."""
    deadline = time.monotonic() + WELCOME_SECONDS
    while (guest := Node.read(folder / "guest")) is None:
        if time.monotonic() > deadline:
            raise NoPeer()
        time.sleep(POLL_SECONDS)
    channel = Channel(folder, "host", {"host": me, "guest": guest})
    channel.say("welcome", {})
    return channel


def _remove_old_sessions(root: Path, now: float, timeout: float) -> None:
    """Remove session folders of runs that died long ago (a listing is enough: they are long unused)."""
    oldest = _bucket(now - timeout - CLOCK_SLACK - OLD_SESSION)
    prefix = ExperimentPaths(root).doctor_scratch("peer-").name
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            bucket = entry.name[len(prefix):].split("-")[0] if entry.name.startswith(prefix) else ""
            if bucket.isdigit() and int(bucket) < oldest:
                shutil.rmtree(entry.path, ignore_errors=True)


def _exists(path: Path) -> bool:
    """Whether `path` is there; an error other than ENOENT counts as there (never join what is unclear)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _read_json(path: Path) -> Any:
    """The JSON in `path`; None while it is not there or cannot be read (ESTALE: look again later)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _wait(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `condition()` held (an OSError counts as not yet); None after `timeout`."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(OSError):
            if condition():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(POLL_SECONDS)


# The tests the two run together. Each returns, to both nodes, what the observing node saw.

def lock_round(channel: Channel, kind: str, holder: str) -> dict[str, Any]:
    """`holder` takes the `kind` lock, the other node tries to take it too (it must not get it), the
    holder appends a line to a file and lets go, the other takes the lock and reads the line.

    What the observing node saw: `took` (it got the lock while it was held), `handoff` (seconds to take
    it after the release), `at_once` (the line was there at the first read) and `setattr` (else seconds
    until it showed after a setattr, as hopt makes under the lock), or `error`.
    """
    step = f"{kind}-{holder}"
    if channel.role == holder:
        _hold(channel, kind, step)
        return channel.hear(f"{step}-seen", STEP_SECONDS + TRY_SECONDS + LOCK_SECONDS + APPEND_SECONDS)
    seen = _observe(channel, kind, step)
    channel.say(f"{step}-seen", seen)
    return seen


def _hold(channel: Channel, kind: str, step: str) -> None:
    said_held = False
    line = f"{step} {secrets.token_hex(8)}"
    try:
        with channel.lock(kind, LOCK_SECONDS):
            channel.say(f"{step}-held", {})
            said_held = True
            channel.hear(f"{step}-tried", STEP_SECONDS + TRY_SECONDS)
            append_line(channel.folder / f"appended-{kind}", f"{line}\n".encode())
    except (HoptError, OSError) as err:  # LockTimeout included
        problem = f"{channel.names[channel.role]} could not {'append' if said_held else 'take it'}: {err}"
        channel.say(f"{step}-released" if said_held else f"{step}-held", {"error": problem})
        return
    channel.say(f"{step}-released", {"line": line})


def _observe(channel: Channel, kind: str, step: str) -> dict[str, Any]:
    me = channel.names[channel.role]
    data = channel.folder / f"appended-{kind}"
    held = channel.hear(f"{step}-held", STEP_SECONDS + LOCK_SECONDS)
    if "error" in held:
        return {"error": held["error"]}
    with contextlib.suppress(OSError):
        data.read_bytes()  # as a worker has read the journal before: the cache a stale view comes from
    took, problem = _try_lock(channel.lock(kind, TRY_SECONDS))
    channel.say(f"{step}-tried", {})
    released = channel.hear(f"{step}-released", STEP_SECONDS + APPEND_SECONDS)
    if problem is not None or "error" in released:
        return {"took": took, "error": problem or released["error"]}
    started = time.monotonic()
    try:
        with channel.lock(kind, LOCK_SECONDS):
            handoff = time.monotonic() - started
            shown = _read_line_after_handoff(data, released["line"])
    except LockTimeout:
        return {"took": took, "handoff": None}
    except (HoptError, OSError) as err:
        return {"took": took, "error": f"{me}: {err}"}
    return {"took": took, "handoff": handoff, **shown}


def _try_lock(lock: ExperimentLock) -> tuple[bool, str | None]:
    """(whether we got `lock`, released again at once; what went wrong, if anything but a timeout)."""
    try:
        with lock:
            return True, None
    except LockTimeout:
        return False, None
    except (HoptError, OSError) as err:
        return False, f"{err}"


def _read_line_after_handoff(data: Path, line: str) -> dict[str, Any]:
    """Whether `line` is in `data` at the first fresh read; else how long after a setattr it showed."""
    wanted = f"{line}\n".encode()
    if wanted in read_bytes(data):
        return {"at_once": True}
    touch(data)  # what hopt does under the lock: the setattr's reply refreshes a network client's cached size
    return {"at_once": False, "setattr": _wait(lambda: wanted in data.read_bytes(), APPEND_SECONDS)}


def listing_test(channel: Channel) -> dict[str, float | None]:
    """Each node lists a folder that only the other writes to, then the other creates a file in it: per
    node, seconds until it listed that file. (A node that created a file in a folder itself would have its
    client's cached listing of it dropped: the worst case is a reader.)"""
    mine, theirs = (channel.folder / f"listing-{role}" for role in (channel.role, channel.other))
    os.listdir(theirs)  # a listing this node has read before, as a worker has `leases/`
    channel.say("listing-read", {})
    channel.hear("listing-read", STEP_SECONDS)
    (mine / "new").touch()
    channel.say("listing-created", {})
    channel.hear("listing-created", STEP_SECONDS)
    delay = _wait(lambda: "new" in os.listdir(theirs), LISTING_SECONDS)
    channel.say("listing-seen", {"delay": delay})
    theirs_delay = channel.hear("listing-seen", STEP_SECONDS + LISTING_SECONDS)["delay"]
    return {role: delay if role == channel.role else theirs_delay for role in ROLES}


def replace_test(channel: Channel) -> dict[str, float | None]:
    """Each writes a file that the other reads, then replaces it: per node, seconds until it read the other's
    new content."""
    mine, theirs = (channel.folder / f"replaced-{role}" for role in (channel.role, channel.other))
    old, new = b"old " + secrets.token_hex(8).encode(), b"new " + secrets.token_hex(8).encode()
    write_atomic(mine, old)
    channel.say("replace-written", {"old": old.decode()})
    their_old = channel.hear("replace-written", STEP_SECONDS)["old"].encode()
    _wait(lambda: theirs.read_bytes() == their_old, STEP_SECONDS)  # read it once: what a cache would keep
    channel.say("replace-read", {})
    channel.hear("replace-read", STEP_SECONDS)
    write_atomic(mine, new)
    channel.say("replaced", {"new": new.decode()})
    their_new = channel.hear("replaced", STEP_SECONDS)["new"].encode()
    delay = _wait(lambda: theirs.read_bytes() == their_new, REPLACE_SECONDS)
    channel.say("replace-seen", {"delay": delay})
    theirs = channel.hear("replace-seen", STEP_SECONDS + REPLACE_SECONDS)["delay"]
    return {role: delay if role == channel.role else theirs for role in ROLES}


# Lines from what the two saw; both nodes compute the same ones.

def _after(seconds: float) -> str:
    return "at once" if seconds < AT_ONCE else f"after {seconds:.1f} s"


def exclusion_check(kind: str, rounds: dict[str, dict[str, Any]], names: dict[str, str]) -> Check:
    """Neither node may take the lock while the other holds it, and each must take it once released."""
    name = f"lock exclusion across nodes ({kind})"
    problems, handoffs = [], []
    for holder, seen in rounds.items():
        a, b = names[holder], names[ROLES[1 - ROLES.index(holder)]]
        if seen.get("took"):
            problems.append(f"{b} took it while {a} held it")
        if seen.get("error"):
            problems.append(seen["error"])
        elif "handoff" in seen and seen["handoff"] is None:
            problems.append(f"{b} could not take it within {LOCK_SECONDS:g} s after {a} released it")
        elif not seen.get("took"):
            handoffs.append(f"{1e3 * seen['handoff']:.0f} ms from {a} to {b}")
    if problems:
        fix = ("flock does not exclude across these nodes: use `lock: hardlink`" if kind == "flock" else
               "the hard-link lock does not work between these nodes")
        return Check(name, False, f"{'; '.join(problems)}: {fix}")
    host, guest = names["host"], names["guest"]
    return Check(name, True, f"{guest} could not take it while {host} held it, nor {host} while {guest} did; it "
                             f"changed hands in {' and '.join(handoffs)}")


def append_check(kind: str, rounds: dict[str, dict[str, Any]], names: dict[str, str]) -> Check:
    """A line appended under the lock must be read by the next holder (after a setattr, as hopt does)."""
    name = f"append seen after the lock changed hands ({kind})"
    seen_lines, problems = [], []
    for holder, seen in rounds.items():
        a, b = names[holder], names[ROLES[1 - ROLES.index(holder)]]
        if seen.get("error") or seen.get("handoff") is None:
            problems.append(f"untested from {a} to {b} (the lock did not change hands)")
        elif seen["at_once"]:
            seen_lines.append(f"{b} read {a}'s line at once")
        elif seen["setattr"] is not None:
            seen_lines.append(f"{b} read {a}'s line only after a setattr (which hopt makes under the lock), "
                              f"{_after(seen['setattr'])}")
        else:
            problems.append(f"{b} did not read {a}'s line, not even {APPEND_SECONDS:g} s after a setattr: a worker "
                            "there would decide on a stale journal")
    if problems:
        return Check(name, False, "; ".join(problems + seen_lines))
    return Check(name, True, "; ".join(seen_lines))


def listing_check(delays: dict[str, float | None], names: dict[str, str]) -> Check:
    """A file one node creates must show in the other's listing (within LISTING_SECONDS)."""
    return _freshness("readdir freshness", delays, names, "listed {a}'s new file", LISTING_SECONDS,
                      "a cached listing: hopt takes claims from the journal, not from listings, so this only "
                      "delays what listings drive: reclaiming leases, collecting leftovers, `hopt status`")


def replace_check(delays: dict[str, float | None], names: dict[str, str]) -> Check:
    """A file one node replaces must read new on the other (within REPLACE_SECONDS)."""
    return _freshness("freshness after a replace", delays, names, "read {a}'s new content", REPLACE_SECONDS,
                      "until then it read the old content: a cached entry")


def _freshness(name: str, delays: dict[str, float | None], names: dict[str, str], what: str, limit: float,
               slow: str) -> Check:
    parts, ok = [], True
    for reader, delay in delays.items():
        a, b = names[ROLES[1 - ROLES.index(reader)]], names[reader]
        done = what.format(a=a)
        if delay is None:
            ok = False
            parts.append(f"{b} had not {done} after {limit:g} s")
        else:
            parts.append(f"{b} {done} {_after(delay)}")
    detail = "; ".join(parts)
    if ok and max(delays.values()) > SLOW:
        detail += f" ({slow})"
    return Check(name, ok, detail)


if __name__ == "__main__":
    _probe_lock(Path(sys.argv[1]), sys.argv[2])

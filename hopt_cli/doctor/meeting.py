"""How two `hopt doctor --peer` runs on two nodes find each other in the experiment directory and talk.

Listings may be stale for 20 s (sshfs) and flock may not exclude, so they meet by names they can both
compute and that are created once: session folders named after the filesystem's clock, which only ever
moves on; and they talk by files each creates once (Channel).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hopt_cli.recipe import LOCK_KINDS
from hopt_cli.store.fsio import append_line, create_exclusive, touch
from hopt_cli.store.locking import ExperimentLock, HardLinkLock, KernelFlock
from hopt_cli.store.mounts import mount_of
from hopt_cli.store.paths import ExperimentPaths

BUCKET_SECONDS = 10  # peer sessions are named after the filesystem's clock, in buckets this long
CLOCK_SLACK = 20.0  # seconds the two nodes' clocks may differ by and still meet
OLD_SESSION = 600.0  # seconds: a session folder this much older than any that may be waiting is removed
SCAN_SECONDS = 0.1  # between looks for the other node while meeting
POLL_SECONDS = 0.01  # between reads while waiting for the other node's next word, or for a change to show
WELCOME_SECONDS = 5.0  # a host welcomes its guest within this, or the guest takes it for dead and looks on
BYE_SECONDS = 5.0  # the host waits this long for its guest's goodbye before it removes their session folder
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

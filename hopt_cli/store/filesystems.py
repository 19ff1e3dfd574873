"""What hopt knows of each filesystem: whether flock excludes across nodes (and under which mount options),
whether link() and link counts can be trusted, and which lock kind to use.

One table, read by the experiment lock (flock is refused wherever a mount's verdict says it does not
exclude), by `hopt doctor` (its filesystem line) and by docs/robustness.md, whose table a test checks
against `markdown()`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.store.mounts import Mount, mount_of

RUN_ON_TWO_NODES = "run `hopt doctor --peer --dir D` on two nodes at once to test across nodes"


@dataclass(frozen=True)
class Verdict:
    """What one mount means for hopt: whether flock excludes across nodes (None: not known), the advice,
    and, where flock does not exclude, why in a phrase (the lock's refusal names it)."""

    flock: bool | None
    advice: str
    problem: str | None = None


def _refused(problem: str, more: str = "") -> Verdict:
    return Verdict(False, f"{problem}, so workers on two nodes could both hold it; use `lock: hardlink`{more}",
                   problem)


def _local(options: set[str]) -> Verdict:
    return Verdict(True, "a local filesystem: workers on other nodes cannot share it, so this is for workers on "
                         "this machine only (either lock kind works)")


def _sshfs(options: set[str]) -> Verdict:
    return _refused("flock does not exclude across sshfs mounts (each mount locks only itself)",
                    ". sshfs also caches listings and attributes (20 s by default; -o dir_cache=no turns its cache "
                    "off)")


def _glusterfs(options: set[str]) -> Verdict:
    return Verdict(True, "flock excludes across GlusterFS clients (the bricks hold the locks): either lock kind "
                         "works; a client caches attributes and entries for about 1 s, which hopt revalidates "
                         "(fresh opens, a setattr under the lock)")


def _nfs(options: set[str]) -> Verdict:
    """NFS: flock is the lock manager's (it excludes across clients) unless the mount keeps it local."""
    local = sorted(options & {"local_lock=all", "local_lock=flock", "nolock"})
    if local:
        return _refused(f"mounted with {local[0]}, NFS locks flock only on this client", " (or remount without it)")
    return Verdict(True, "flock is backed by the NFS lock manager (NLM for NFSv3, the protocol's own locks for "
                         "NFSv4) and excludes across clients: either lock kind works, as long as the lock "
                         "service answers")


def _lustre(options: set[str]) -> Verdict:
    """Lustre: flock is coherent across clients only with the `flock` mount option."""
    if "flock" in options:
        return Verdict(True, "mounted with -o flock: flock is coherent across clients: either lock kind works")
    if "localflock" in options:
        return _refused("mounted with -o localflock, Lustre locks flock only on this client",
                        " (or remount with -o flock)")
    return _refused("mounted without -o flock, Lustre's flock() fails (noflock) or locks only on this client",
                    " (or remount with -o flock)")


def _gpfs(options: set[str]) -> Verdict:
    return Verdict(True, "GPFS (IBM Storage Scale) honours flock across the nodes of its cluster: either lock kind "
                         "works")


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
    return _refused("BeeGFS clients keep flock local unless beegfs-client.conf sets tuneUseGlobalFileLocks = true "
                    f"({seen})", ", or set it on every node")


def _ceph(options: set[str]) -> Verdict:
    return Verdict(True, "CephFS's metadata servers coordinate flock across clients: either lock kind works")


@dataclass(frozen=True)
class Filesystem:
    """One row of the table: the words are what docs/robustness.md shows; `verdict` judges one mount."""

    name: str
    types: tuple[str, ...]  # as /proc/self/mountinfo names them
    flock: str  # whether flock excludes across nodes, and under which mount options
    links: str  # whether link() and link counts can be trusted
    lock: str  # the lock kind to use
    verdict: Callable[[set[str]], Verdict]  # from the mount's options


LOCAL_TYPES = ("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay", "f2fs", "bcachefs", "ramfs", "jfs",
               "reiserfs")
UNTESTED_LINKS = "not tested here (hopt relies on link() only, never on link counts; `hopt doctor` shows both)"
FILESYSTEMS = (
    Filesystem("local disk", LOCAL_TYPES, "yes (one machine only)", "yes", "either", _local),
    Filesystem("sshfs", ("fuse.sshfs",), "no: each mount locks only itself (refused)",
               "link() works; link counts and inode numbers lie (`st_nlink` stays 1)", "`hardlink`", _sshfs),
    Filesystem("GlusterFS", ("fuse.glusterfs", "glusterfs"), "yes: the bricks hold the locks",
               "yes (GlusterFS 10.3, 2026-12-06: a link made through one mount reads 2 links and one inode through "
               "the other)", "either", _glusterfs),
    Filesystem("NFS v3/v4", ("nfs", "nfs4"), "yes, unless mounted with `local_lock=all`, `local_lock=flock` or "
               "`nolock` (refused)", "not tested here; a retransmitted link() may report an error although it "
               "succeeded (hopt then reads the lock's content)", "`flock`, else `hardlink`", _nfs),
    Filesystem("Lustre", ("lustre",), "only when mounted with `-o flock` (`localflock`, or neither: refused)",
               UNTESTED_LINKS, "`flock` with `-o flock`, else `hardlink`", _lustre),
    Filesystem("GPFS (IBM Storage Scale)", ("gpfs",), "yes, across the nodes of its cluster", UNTESTED_LINKS,
               "either", _gpfs),
    Filesystem("BeeGFS", ("beegfs",), "only where beegfs-client.conf sets `tuneUseGlobalFileLocks = true` (else "
               "refused)", UNTESTED_LINKS, "`flock` with that setting on every node, else `hardlink`", _beegfs),
    Filesystem("CephFS", ("ceph", "fuse.ceph-fuse", "fuse.ceph"), "yes: the metadata servers coordinate it",
               UNTESTED_LINKS, "either", _ceph),
)
_BY_TYPE = {fstype: fs for fs in FILESYSTEMS for fstype in fs.types}


def judge(mount: Mount) -> Verdict:
    """The verdict for a mount, by its type and options (as /proc/self/mountinfo gives them)."""
    row = _BY_TYPE.get(mount.fstype)
    if row is None:
        return Verdict(None, f"hopt knows nothing about {mount.fstype}, so whether flock excludes across nodes is "
                             f"untested: {RUN_ON_TWO_NODES}")
    return row.verdict(set(mount.options.split(",")))


def flock_problem(path: str | os.PathLike) -> str | None:
    """Why flock cannot be the experiment lock under `path`, or None when nothing is known against it."""
    mount = mount_of(path)
    return None if mount is None else judge(mount).problem


def markdown() -> str:
    """The table as docs/robustness.md shows it."""
    rows = ["| filesystem | type (/proc/self/mountinfo) | flock excludes across nodes | hard links and link counts "
            "| lock kind |", "|---|---|---|---|---|"]
    rows += [f"| {fs.name} | {', '.join(f'`{t}`' for t in fs.types)} | {fs.flock} | {fs.links} | {fs.lock} |"
             for fs in FILESYSTEMS]
    return "\n".join(rows) + "\n"

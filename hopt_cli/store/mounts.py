"""Which filesystem a path is on, from /proc/self/mountinfo; filesystems.py says what that means for hopt."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    source: str
    options: str  # the mount's and the superblock's options, comma-separated


def mount_of(path: str | os.PathLike, table: Path | None = None) -> Mount | None:
    """The mount holding `path` (the longest mount point above its real path) in `table` (a file in
    /proc/self/mountinfo's format, that one by default); None off Linux."""
    try:
        lines = (table or MOUNTINFO).read_text().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best: Mount | None = None
    for line in lines:
        mount = _parse(line)
        if mount is not None and _contains(mount.point, real) and (best is None or len(mount.point) > len(best.point)):
            best = mount
    return best


def _parse(line: str) -> Mount | None:
    """One mountinfo line: `id parent major:minor root point options [optional...] - fstype source super`."""
    fields = line.split()
    if "-" not in fields:
        return None
    dash = fields.index("-")
    if dash < 6 or len(fields) < dash + 3:
        return None
    point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
    superblock = fields[dash + 3] if len(fields) > dash + 3 else ""
    return Mount(point, fields[dash + 1], fields[dash + 2], f"{fields[5]},{superblock}")


def _contains(point: str, path: str) -> bool:
    return path == point or path.startswith(point.rstrip("/") + "/")


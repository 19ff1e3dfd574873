"""Leases: which worker trains which member now, with the fencing token that makes its commit valid."""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli.store.fsio import read_bytes


def pid_namespace() -> int | None:
    """Identifies the pid namespace, so a pid is only checked where it means the same process."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class Holder:
    """A worker process as leases name it, with the GPUs it sees (CUDA_VISIBLE_DEVICES; None: not set)."""

    worker: str
    host: str
    pid: int
    pidns: int | None
    device: str | None = None

    @classmethod
    def this_process(cls, worker: str) -> Holder:
        return cls(worker, socket.gethostname(), os.getpid(), pid_namespace(), os.environ.get("CUDA_VISIBLE_DEVICES"))

    def is_gone(self, here: Holder) -> bool:
        """True only when this holder ran on `here`'s host and pid namespace and its process is gone."""
        if (self.host, self.pidns) != (here.host, here.pidns) or self.pidns is None:
            return False
        return self.pid != here.pid and not _running(self.pid)


@dataclass(frozen=True)
class Lease:
    member: int
    interval: int
    token: str
    holder: Holder
    since: float
    parent_checkpoint: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "holder": dict(vars(self.holder))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        """The lease in `data`; TypeError when a field has the wrong type (a file edited by hand)."""
        lease = cls(**{**data, "holder": Holder(**data["holder"])})
        h = lease.holder
        typed = (_is_int(lease.member) and _is_int(lease.interval) and isinstance(lease.token, str)
                 and isinstance(lease.since, (int, float)) and isinstance(lease.parent_checkpoint, (str, type(None)))
                 and isinstance(h.worker, str) and isinstance(h.host, str) and _is_int(h.pid)
                 and (h.pidns is None or _is_int(h.pidns)) and isinstance(h.device, (str, type(None))))
        if not typed:
            raise TypeError("a lease field has the wrong type")
        return lease

    @classmethod
    def read(cls, path: Path) -> Lease | None:
        """The lease in `path`, or None when it is gone or not a valid lease (e.g. edited by hand).

        A transient error (ESTALE) is retried: a live lease must never read as invalid and be reclaimed."""
        try:
            return cls.from_dict(json.loads(read_bytes(path)))
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None


def _running(pid: int) -> bool:
    """Whether process `pid` of this pid namespace runs: a killed process that its parent has not reaped
    yet (a zombie) still answers kill(0), but it holds no lease any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")  # the state follows the command's name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

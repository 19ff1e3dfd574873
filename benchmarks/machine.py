"""Where a benchmark ran: CPU, cores, the filesystem under its experiments, load, and the code's commit."""
from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    filesystem: str
    python: str
    commit: str

    @classmethod
    def describe(cls, where: Path) -> Machine:
        return cls(_cpu_model(), os.cpu_count() or 0, _filesystem(where), platform.python_version(), _commit())

    def markdown(self) -> str:
        return (f"- CPU: {self.cpu}, {self.cores} cores\n- experiments on: {self.filesystem}\n"
                f"- Python {self.python}, hopt at {self.commit}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_summary() -> str:
    """The CPU model, core count and Python version, in one line for a results file."""
    return f"{_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _filesystem(where: Path) -> str:
    """The mount (device, type) holding `where`, from /proc/mounts."""
    where = where.resolve()
    best = ("?", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if (where == Path(mount) or Path(mount) in where.parents) and len(mount) > len(best[2]):
                best = (device, kind, mount)
    except OSError:
        pass
    return f"{best[1]} on {best[0]} (mounted at {best[2] or '?'})"


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}"

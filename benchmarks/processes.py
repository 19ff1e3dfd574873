"""Run hopt as real processes and measure them: wall time and peak memory (from the kernel, per child)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO


@dataclass(frozen=True)
class Measured:
    wall: float  # seconds
    peak_mb: float  # peak resident memory of the process
    returncode: int


def hopt_command(*args: str) -> list[str]:
    """`hopt ARGS` run from this checkout (not whatever `hopt` is first on PATH)."""
    return [sys.executable, "-m", "hopt_cli", *args]


def start(command: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, **kwargs)


def wait(process: subprocess.Popen, started: float) -> Measured:
    """Reap `process` and read its peak memory from wait4's resource usage (ru_maxrss is KiB on Linux)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(time.perf_counter() - started, usage.ru_maxrss / 1024, process.returncode)


def run(command: list[str], output: Path | None = None) -> Measured:
    """Run `command` to completion, its output to `output` (or discarded)."""
    started = time.perf_counter()
    with open(output or os.devnull, "wb") as sink:
        process = start(command, stdout=sink, stderr=subprocess.STDOUT)
    return wait(process, started)

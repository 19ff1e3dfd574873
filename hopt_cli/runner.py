"""`hopt run`: N local worker processes on one machine, a progress line, and a clean Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.store import Store

POLL_SECONDS = 0.5
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class RunResult:
    complete: bool
    interrupted: bool
    failed: str | None
    exit_codes: dict[str, int]


def worker_command(root: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--name", name]


def worker_environment(workers: int) -> dict[str, str]:
    """Our environment, with the cores shared out between workers unless the user already chose.

    Each worker gets cores / workers threads for OpenMP and BLAS (torch, numpy): N processes each
    spinning on every core are many times slower than N processes with their own share.
    """
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return {**{name: threads for name in THREAD_VARIABLES}, **os.environ}


def run_local(store: Store, workers: int, progress: Callable[[int, int, str], None]) -> RunResult:
    """Start `workers` worker processes and wait for them; Ctrl-C asks them to stop and waits again."""
    processes = {}
    environment = worker_environment(workers)
    for index in range(workers):
        name = f"local-{index}"
        log = open(store.paths.log(name), "ab")
        processes[name] = subprocess.Popen(worker_command(store.paths.root, name), stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           env=environment)
        log.close()
    interrupted = False
    try:
        _wait(store, processes, progress)
    except KeyboardInterrupt:
        interrupted = True
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            process.wait()
    population = store.sync()
    _report(store, population.intervals_done, progress)
    return RunResult(population.complete, interrupted, population.failed,
                     {name: p.returncode for name, p in processes.items()})


def _wait(store: Store, processes: dict[str, subprocess.Popen], progress: Callable[[int, int, str], None]) -> None:
    last = -1
    while any(p.poll() is None for p in processes.values()):
        done = store.sync().intervals_done
        if done != last:
            _report(store, done, progress)
            last = done
        time.sleep(POLL_SECONDS)  # a progress display, not synchronisation: workers run on their own


def _report(store: Store, done: int, progress: Callable[[int, int, str], None]) -> None:
    population = store.population
    best = population.best[0] if population.best else None
    note = f"best {store.recipe.objective.metric} {best.score:.4g} (member {best.member})" if best else ""
    progress(done, store.recipe.population * store.recipe.intervals, note)

"""`hopt run`: N local worker processes on one machine, a progress line, and stop signals passed on.

The runner owns its workers: SIGINT, SIGTERM and SIGHUP are forwarded to them as SIGTERM (each
releases its member at once); a second signal kills them. Should the runner itself be killed, the
kernel sends every worker SIGTERM (PR_SET_PDEATHSIG), so no worker outlives the run that started it.
A worker that dies (killed, or exiting non-zero while the experiment has not failed) is said and
replaced by one of a new name, at most as many times in a run as it has workers; then the run stops.
So is one that stopped after a CUDA error broke its process (exit status POISONED_EXIT).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from hopt_cli.errors import HoptError
from hopt_cli.isolation import POISONED_EXIT, describe_exit, die_with_parent
from hopt_cli.signals import RUN_STOPS, StopSignals
from hopt_cli.store import Store
from hopt_cli.trainable import THREAD_VARIABLES
from hopt_cli.text import counted

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunResult:
    complete: bool
    interrupted: signal.Signals | None
    failed: str | None
    exit_codes: dict[str, int]  # of every worker the run started, replacements included
    died: str | None = None  # why the run stopped early: a worker died with no restart left
    stopped: str | None = None  # why a stop rule of the recipe stopped the experiment


@dataclass
class _Slot:
    """One of the run's workers: its process now, its first name, and how often it was replaced."""

    name: str
    index: int
    process: subprocess.Popen
    restarts: int = 0

    @property
    def current(self) -> str:
        return self.name if not self.restarts else f"{self.name}-r{self.restarts}"


def worker_argv(root: os.PathLike, name: str, piped: bool = False) -> list[str]:
    """The argv of `hopt worker` for one local worker; `piped`: its trainable comes pickled on its standard input."""
    return [sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--name", name,
            *(["--trainable-from-stdin"] if piped else [])]


def worker_environment(workers: int, gpu: str | None = None) -> dict[str, str]:
    """Our environment, with the cores shared out between workers unless the user already chose, and
    the worker's GPU (`gpu`) as the only one it sees. GPUs are numbered as nvidia-smi numbers them
    (CUDA_DEVICE_ORDER=PCI_BUS_ID, unless the user chose), not fastest first as CUDA does by default.

    Each worker gets cores / workers threads for OpenMP and BLAS (torch, numpy): N processes each
    spinning on every core are many times slower than N processes with their own share. The cores are
    those this process may run on (a SLURM task's allocation), not all of the machine's.
    """
    threads = str(max(1, _cores() // workers))
    environment = {**{name: threads for name in THREAD_VARIABLES}, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **os.environ}
    return environment if gpu is None else {**environment, "CUDA_VISIBLE_DEVICES": gpu}


def choose_gpus(spec: str, visible: str | None, count: Callable[[], int]) -> list[str]:
    """The devices of `--gpus`: `all`, or a comma list of indices among the visible ones (or, when
    CUDA_VISIBLE_DEVICES is not set, device ids as `nvidia-smi` numbers them, or UUIDs).

    `visible` is our CUDA_VISIBLE_DEVICES (None: not set); `count` how many devices torch sees, asked
    only where CUDA_VISIBLE_DEVICES does not say (a SLURM task's allocation does)."""
    shown = [d.strip() for d in visible.split(",") if d.strip()] if visible is not None else None
    if spec.strip() == "all":
        devices = shown if shown is not None else [str(i) for i in range(count())]
        if not devices:
            raise HoptError("--gpus all: no GPU is visible here (torch sees none, CUDA_VISIBLE_DEVICES "
                            f"is {visible!r}); leave out --gpus to train on the CPU")
        return devices
    asked = [d.strip() for d in spec.split(",")]
    if not all(asked) or len(set(asked)) != len(asked):
        raise HoptError(f"--gpus {spec}: give distinct device numbers separated by commas (e.g. 0,1,2,3), or all")
    if shown is None:
        devices = count()
        if not devices:
            raise HoptError(f"--gpus {spec}: no GPU is visible here (torch sees none); leave out --gpus to train on "
                            "the CPU")
        if not all(int(d) < devices for d in asked if d.isdigit()):
            raise HoptError(f"--gpus {spec}: torch sees {counted(devices, 'GPU')} here, numbered 0 to {devices - 1}; "
                            "give those numbers, or all")
        return asked
    if not shown:
        raise HoptError(f"--gpus {spec}: CUDA_VISIBLE_DEVICES={visible!r} hides every GPU; leave out --gpus to train "
                        "on the CPU")
    if not all(d.isdigit() and int(d) < len(shown) for d in asked):
        raise HoptError(f"--gpus {spec}: CUDA_VISIBLE_DEVICES={visible} makes {counted(len(shown), 'GPU')} visible, "
                        f"numbered 0 to {len(shown) - 1} here; give those numbers, or all")
    return [shown[int(d)] for d in asked]


def mig_devices(listing: str) -> list[str]:
    """The devices of `nvidia-smi -L` output when a GPU is split by MIG: each MIG slice (and each whole GPU
    that is not split) by UUID, as CUDA_VISIBLE_DEVICES takes them; [] when no GPU is split."""
    gpus: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        uuid = re.search(r"\(UUID: ([^)\s]+)\)", line)
        if uuid and line.startswith("GPU "):
            gpus.append((uuid[1], []))
        elif uuid and line.lstrip().startswith("MIG ") and gpus:
            gpus[-1][1].append(uuid[1])
    if not any(slices for _, slices in gpus):
        return []
    return [device for gpu, slices in gpus for device in slices or [gpu]]


def default_gpus(workers: int, visible: str | None, listing: Callable[[], str]) -> list[str]:
    """The GPUs of `hopt run` without --gpus: every visible one when there are several, so that worker i
    trains on its own (round-robin past them) rather than all on cuda:0; [] (CUDA's default) otherwise.

    `visible` is our CUDA_VISIBLE_DEVICES (None: not set), `listing` what `nvidia-smi -L` prints (asked
    only where CUDA_VISIBLE_DEVICES does not say): without it no GPU is counted, and torch is never
    imported for the count.
    """
    if workers < 2:
        return []
    if visible is not None:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        text = listing()
        gpus = [str(i) for i, line in enumerate(line for line in text.splitlines() if line.startswith("GPU "))]
        devices = mig_devices(text) or gpus
    return devices if len(devices) > 1 else []


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_names(workers: int) -> list[str]:
    """Names unique to this run (a worker of an earlier run may still hold a lease under its name)."""
    return [f"local-{os.getpid()}-{index}" for index in range(workers)]


def run_local(store: Store, workers: int, progress: Callable[[int, int, str], None],
              say: Callable[[str], None], trainable: Callable[..., Any] | None = None,
              gpus: list[str] | None = None, names: list[str] | None = None,
              preemption: signal.Signals | None = None) -> RunResult:
    """Start `workers` worker processes (running `trainable` instead of the recipe's, if given; worker i
    on GPU gpus[i % len(gpus)], if given; named `names`, by default unique to this run) and wait for
    them, replacing one that dies; a stop signal (RUN_STOPS, or `preemption`) is passed on to them."""
    payload = cloudpickle.dumps(trainable) if trainable is not None else None
    names = names or worker_names(workers)
    started: dict[str, subprocess.Popen] = {}

    def start(name: str, index: int) -> subprocess.Popen:
        gpu = gpus[index % len(gpus)] if gpus else None
        started[name] = _start(store, name, payload, worker_environment(len(names), gpu))
        return started[name]

    with StopSignals(preemption, RUN_STOPS) as signals:
        try:
            slots = [_Slot(name, index, start(name, index)) for index, name in enumerate(names)]
            died = _wait(store, slots, start, progress, say, signals)
            if signals.count:
                say(f"{signals.first.name}: stopping the workers (their members are released); "
                    "a second signal kills them")
            if signals.count or died:
                _stop(started, signals)
        finally:
            _kill(started)
    population = store.sync()
    _report(store, population.intervals_done, progress)
    return RunResult(population.complete, signals.first, population.failed,
                     {name: p.returncode for name, p in started.items()}, died, population.stopped)


def _start(store: Store, name: str, payload: bytes | None, environment: dict[str, str]) -> subprocess.Popen:
    """One worker process, its output appended to its own log."""
    runner = os.getpid()
    with open(store.paths.log(name), "ab") as log:
        process = subprocess.Popen(
            worker_argv(store.paths.root, name, payload is not None),
            stdin=subprocess.DEVNULL if payload is None else subprocess.PIPE, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env=environment,
            preexec_fn=lambda: die_with_parent(runner, signal.SIGTERM))  # before exec
    if payload is not None:
        _send(process, payload)
    return process


def _send(process: subprocess.Popen, payload: bytes) -> None:
    """Hand a worker its pickled trainable; one that died at once says why in its exit status and log."""
    for step in (lambda: process.stdin.write(payload), process.stdin.close):
        with contextlib.suppress(BrokenPipeError):
            step()


def _running(processes: dict[str, subprocess.Popen]) -> list[subprocess.Popen]:
    """The workers still running; polls every one, so each exited worker is reaped at once."""
    return [p for p in processes.values() if p.poll() is None]


def _wait(store: Store, slots: list[_Slot], start: Callable[[str, int], subprocess.Popen],
          progress: Callable[[int, int, str], None], say: Callable[[str], None], signals: StopSignals) -> str | None:
    """Show progress until every worker has exited or a stop signal arrived, replacing a worker that died
    (at most len(slots) times in all); return why the run must stop when one died with none left."""
    last = -1
    restarts = 0
    while not signals.count:
        for slot in slots:
            status = slot.process.poll()
            if status in (None, 0) or store.sync().failed:  # a failed experiment stops every worker: no death
                continue
            how = "stopped after a CUDA error broke its process" if status == POISONED_EXIT else \
                f"died ({describe_exit(status)})"
            dead = f"worker {slot.current} {how}; its log: {store.paths.log(slot.current)}"
            if restarts == len(slots):
                return f"{dead}; {counted(restarts, 'dead worker')} replaced already, so the run stops"
            restarts += 1
            slot.restarts += 1
            slot.process = start(slot.current, slot.index)
            say(f"{dead}; starting {slot.current} in its place (replacement {restarts} of at most {len(slots)})")
        if not any(slot.process.poll() is None for slot in slots):
            return None
        done = store.sync().intervals_done
        if done != last:
            _report(store, done, progress)
            last = done
        time.sleep(POLL_SECONDS)  # a progress display, not synchronisation: workers run on their own
    return None


def _stop(processes: dict[str, subprocess.Popen], signals: StopSignals) -> None:
    """Ask every worker to stop (SIGTERM) and wait for them; a second stop signal ends the wait."""
    for process in _running(processes):
        process.send_signal(signal.SIGTERM)
    while _running(processes) and signals.count < 2:
        time.sleep(0.05)  # waiting on the workers' exit (reaped by poll) or on a second signal


def _kill(processes: dict[str, subprocess.Popen]) -> None:
    """SIGKILL every worker still running and reap it (its lease is reclaimed at once: its pid is gone)."""
    for process in _running(processes):
        process.kill()
    for process in processes.values():
        process.wait()


def _report(store: Store, done: int, progress: Callable[[int, int, str], None]) -> None:
    population = store.population
    best = population.best[0] if population.best else None
    note = f"best {store.recipe.objective.metric} {best.score:.4g} (member {best.member})" if best else ""
    progress(done, population.budget, note)

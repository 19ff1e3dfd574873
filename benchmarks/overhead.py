"""hopt's own cost per interval: a no-op population trained by 1, 2, 4 and 8 local worker processes.

    python -m benchmarks.overhead [--ray --ray-python /path/to/python-with-ray] [--scratch DIR [--lock KIND]]

Each run creates a fresh experiment (under $TMPDIR, or --scratch, e.g. a network filesystem's mount) of
workers/noop.py, starts real `hopt worker
--verbose` processes and waits for them. Intervals per second are counted twice: over the whole wall
time (interpreter start-up, imports and the last worker's exit included) and over the journal's span
from the first claim to the last commit. Claim and commit times and lock wait and hold come from the
workers' timing lines (hopt_cli/timing.py). With --ray, the same population runs under Ray Tune's PBT
(benchmarks/ray_noop.py, in the interpreter given) in the same invocation. With --scratch, the report
also gives the latency of each filesystem operation a claim and a commit make there. Prints a markdown report.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.disk import SLACK, DiskWatch
from benchmarks.common import REPO
from benchmarks.machine import Machine, load_average
from benchmarks.processes import hopt_command, start, wait
from benchmarks.scale import per_interval, percentile
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.store.fsio import append_line, fsync_dir, touch, write_atomic
from hopt_cli.timing import STEPS, StepTiming

RAY_SCRIPT = REPO / "benchmarks" / "ray_noop.py"
DISK_EVERY = 0.01  # seconds between samples of checkpoints/: rarely enough to leave the CPUs to the workers


def noop_recipe(population: int, intervals: int, lock: str = "flock") -> Recipe:
    return Recipe.from_dict({"lock": lock,
        "name": "noop", "seed": 0, "objective": {"metric": "score", "mode": "max"}, "population": population, "intervals": intervals, "steps": 1,
        "policy": {"name": "romul"}, "worker": "workers.noop:noop",
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}, "lease": {"timeout": 60, "heartbeat": 10},
    })


@dataclass
class Runs:
    """Every run of one configuration; each statistic is taken per run, then the median over runs.

    On a shared machine one disturbed run would otherwise set a pooled p99 alone.
    """

    wall: list[float] = field(default_factory=list)
    span: list[float] = field(default_factory=list)
    intervals: list[int] = field(default_factory=list)
    timings: list[list[list[StepTiming]]] = field(default_factory=list)  # per run, per worker
    disk_excess: list[int] = field(default_factory=list)  # checkpoints beyond population + leases + keep_best

    def rate(self) -> float:
        """Median intervals per second over the whole wall time."""
        return statistics.median(n / w for n, w in zip(self.intervals, self.wall))

    def steady_rate(self) -> float:
        """Median intervals per second from the first claim to the last commit."""
        return statistics.median(n / s for n, s in zip(self.intervals, self.span))

    def percentiles(self, value: Callable[[StepTiming], float], steps: tuple[str, ...] = STEPS,
                    steady: bool = False) -> str:
        """p50 / p99 in ms of `value` over the steps named, per run, then the median over runs.

        `steady`: only steps that ended once every worker had made its first step (start-up over).
        """
        runs = []
        for workers in self.timings:
            since = max(w[0].at for w in workers if w) if steady else 0.0
            runs.append([value(t) for w in workers for t in w if t.step in steps and t.at > since])
        return _p50_p99(runs)

    def interval_holds(self) -> str:
        """p50 / p99 in ms of the lock hold each committed interval cost, per run, then the median over runs."""
        return _p50_p99([[held for w in workers for held in per_interval(w, lambda t: t.held)]
                         for workers in self.timings])


def _p50_p99(runs: list[list[float]]) -> str:
    """'p50 / p99' in ms: each percentile per run, then the median over the runs that have values."""
    runs = [values for values in runs if values]
    if not runs:
        return "-"
    p50, p99 = (statistics.median(percentile(values, q) for values in runs) for q in (50, 99))
    return f"{p50 * 1e3:.2f} / {p99 * 1e3:.2f}"


def run_hopt(population: int, intervals: int, workers: int, runs: Runs, scratch: Path | None = None,
             lock: str = "flock") -> None:
    """One complete no-op experiment with `workers` worker processes, added to `runs`."""
    with tempfile.TemporaryDirectory(prefix="hopt-overhead-", dir=scratch) as temp, \
            tempfile.TemporaryDirectory(prefix="hopt-overhead-logs-") as local:
        root = Path(temp) / "exp"
        logs = [Path(local) / f"worker-{i}.log" for i in range(workers)]
        started = time.perf_counter()
        store = Store.create(root, noop_recipe(population, intervals, lock))
        with DiskWatch(root, DISK_EVERY) as watch:
            processes = []
            for index, log in enumerate(logs):
                with open(log, "wb") as sink:
                    processes.append(start(hopt_command("worker", "--dir", str(root), "--name", f"w{index}",
                                                        "--verbose"), stdout=sink, stderr=subprocess.STDOUT))
            failed = [m.returncode for m in (wait(p, started) for p in processes) if m.returncode != 0]
        runs.wall.append(time.perf_counter() - started)
        runs.disk_excess.append(watch.excess(population, store.recipe.keep_best))
        if failed or not store.sync().complete:
            raise SystemExit(f"a worker failed (exit statuses {failed}); see {logs[0]}")
        events = store.journal.read()[0]
        commits = [e for e in events if e["type"] == "commit"]
        runs.intervals.append(len(commits))
        runs.span.append(commits[-1]["time"] - events[0]["time"])
        runs.timings.append([[t for t in map(StepTiming.parse, log.read_text().splitlines()) if t] for log in logs])


@dataclass(frozen=True)
class RayRun:
    version: str
    intervals: int
    wall: float
    span: float

    @property
    def rate(self) -> float:
        return self.intervals / self.wall

    @property
    def steady_rate(self) -> float:
        return self.intervals / self.span


def run_ray(python: str, population: int, intervals: int) -> RayRun:
    """The same no-op population under Ray Tune's PBT, in `python` (which must have ray[tune])."""
    started = time.perf_counter()
    done = subprocess.run([python, str(RAY_SCRIPT), "--population", str(population), "--intervals", str(intervals)],
                          cwd=tempfile.gettempdir(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"Ray Tune run failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"{result['errors']} Ray Tune trials failed:\n{done.stderr[-3000:]}")
    return RayRun(result["ray"], result["intervals"], wall, result["last"] - result["first"])


def hopt_row(workers: int, runs: Runs) -> str:
    return (f"| hopt | {workers} | {statistics.median_low(runs.intervals)} | {statistics.median(runs.wall):.2f} s "
            f"| {runs.rate():.0f} | {runs.steady_rate():.0f} | {runs.percentiles(lambda t: t.total, ('claim',))} "
            f"| {runs.percentiles(lambda t: t.total, ('commit',))} | {runs.percentiles(lambda t: t.waited)} "
            f"| {runs.percentiles(lambda t: t.held)} | {runs.percentiles(lambda t: t.held, steady=True)} "
            f"| {runs.interval_holds()} | {max(runs.disk_excess):+d} |")


def report(population: int, intervals: int, workers: list[int], repeats: int, ray_python: str | None,
           scratch: Path | None = None, lock: str = "flock") -> str:
    lines = [f"no-op population {population} x {intervals} intervals; hopt: each figure is the median over "
             f"{repeats} runs of that run's figure", "",
             "| system | workers | intervals trained | wall | intervals/s (with start-up) | intervals/s (steady) "
             "| claim p50 / p99 (ms) | commit p50 / p99 (ms) | lock wait p50 / p99 (ms) "
             "| lock hold p50 / p99 (ms) | lock hold p50 / p99, all workers started (ms) "
             "| lock hold per interval p50 / p99 (ms) | checkpoints beyond the bound |",
             "|---" * 13 + "|"]
    loads = []
    results = {}
    for count in workers:
        loads.append(f"{count} workers: {load_average()}")
        runs = Runs()
        for _ in range(repeats):
            run_hopt(population, intervals, count, runs, scratch, lock)
        results[count] = runs
        lines.append(hopt_row(count, runs))
    if ray_python:
        loads.append(f"Ray Tune: {load_average()}")
        ray = run_ray(ray_python, population, intervals)
        lines.append(f"| Ray Tune {ray.version} PBT | 1 trial per CPU | {ray.intervals} | {ray.wall:.1f} s "
                     f"| {ray.rate:.2f} | {ray.steady_rate:.2f} | | | | | | | |")
        lines += ["", "| hopt / Ray Tune | with start-up | steady |", "|---|---|---|"]
        lines += [f"| {count} workers | {runs.rate() / ray.rate:.0f}x | {runs.steady_rate() / ray.steady_rate:.0f}x |"
                  for count, runs in results.items()]
    loads.append(f"end: {load_average()}")
    if scratch is not None:
        lines += ["", *operation_latencies(scratch)]
    notes = [f"checkpoints beyond the bound: the most ever sampled (every {DISK_EVERY * 1e3:.0f} ms) in checkpoints/ "
             f"beyond population + live leases + keep_best; the bound allows {SLACK} (benchmarks/disk.py)",
             "load average (1, 5, 15 min) at the start of each row (after the first, raised by this benchmark's own "
             "processes): " + "; ".join(loads)]
    return "\n".join(lines + [""] + notes)


OPERATIONS = 200  # timed repetitions of each filesystem operation


def operation_latencies(scratch: Path) -> list[str]:
    """p50 / p99 of the filesystem operations a claim and a commit consist of, in a folder under `scratch`."""
    with tempfile.TemporaryDirectory(prefix="hopt-ops-", dir=scratch) as temp:
        folder = Path(temp)
        journal, lease = folder / "journal.jsonl", folder / "lease.json"
        journal.touch()
        counter = iter(range(10 ** 9))

        def rename_into() -> None:
            staging = folder / f"s{next(counter)}"
            staging.mkdir()
            os.rename(staging, folder / f"c{staging.name}")
            fsync_dir(folder)

        operations = {
            "append one line + fsync (a journal event)": lambda: append_line(journal, b'{"type":"x"}\n'),
            "setattr (touch: refresh a cached size)": lambda: touch(journal),
            "read the journal's tail through a fresh open": lambda: journal.open("rb").close(),
            "write a file atomically (temp, fsync, rename; a lease)": lambda: write_atomic(lease, b"{}", sync_dir=False),
            "rename a folder + fsync the directory (publish a checkpoint)": rename_into,
            "list a directory (leases/)": lambda: os.listdir(folder),
        }
        lines = [f"filesystem operations in {scratch} ({OPERATIONS} each)", "",
                 "| operation | p50 (ms) | p99 (ms) |", "|---|---|---|"]
        for name, operation in operations.items():
            seconds = []
            for _ in range(OPERATIONS):
                began = time.perf_counter()
                operation()
                seconds.append(time.perf_counter() - began)
            lines.append(f"| {name} | {percentile(seconds, 50) * 1e3:.2f} | {percentile(seconds, 99) * 1e3:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--intervals", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ray", action="store_true", help="also run the population under Ray Tune's PBT")
    parser.add_argument("--ray-python", default=sys.executable, help="an interpreter with ray[tune] installed")
    parser.add_argument("--scratch", type=Path, help="create the experiments in this folder (default: $TMPDIR)")
    parser.add_argument("--lock", choices=["flock", "hardlink"], default="flock")
    args = parser.parse_args()
    machine = Machine.describe(args.scratch or Path(tempfile.gettempdir()))
    print(f"command: `python -m benchmarks.overhead {' '.join(sys.argv[1:])}`", machine.markdown(), "", sep="\n")
    print(report(args.population, args.intervals, args.workers, args.repeats, args.ray_python if args.ray else None,
                 args.scratch, args.lock))


if __name__ == "__main__":
    main()

"""hopt on a large experiment: claim + commit, `hopt status`, `hopt best` and peak memory.

    python -m benchmarks.scale --population 1024 --commits 1000000

generates a synthetic experiment (benchmarks/synthetic.py) in a temporary directory (under $TMPDIR),
then measures real processes on it: `hopt status` and `hopt best` (wall time, peak memory), and a
`hopt worker --verbose` that trains `--intervals` no-op intervals and is then stopped with SIGTERM.
Prints a markdown report.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.machine import Machine, load_average
from benchmarks.processes import Measured, hopt_command, run, start, wait
from benchmarks.synthetic import generate
from hopt_cli.timing import StepTiming

REPEATS = 3


@dataclass(frozen=True)
class WorkerRun:
    """A worker on the large experiment: its start-up, what each interval cost it under the lock, its peak memory."""

    startup: float  # spawn to the end of its first claim (open, snapshot, tail replay, first decision)
    steps: list[float]  # per interval: its commit (which claims the next) and every step since the last commit
    held: list[float]  # the lock hold of those
    measured: Measured


def measure_worker(root: Path, intervals: int) -> WorkerRun:
    """Start a real worker, stop it with SIGTERM once it has committed `intervals`, and reap it.

    It may commit a few more before it reads the signal; only the first `intervals` are kept.
    """
    started = time.perf_counter()
    process = start(hopt_command("worker", "--dir", str(root), "--name", "scale", "--verbose"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    startup, timings, commits = 0.0, [], 0
    for line in process.stderr:
        timing = StepTiming.parse(line)
        if timing is None or commits >= intervals:
            continue
        startup = startup or time.perf_counter() - started
        timings.append(timing)
        commits += timing.step == "commit"
        if commits == intervals:
            process.send_signal(signal.SIGTERM)
    return WorkerRun(startup, per_interval(timings, lambda t: t.total), per_interval(timings, lambda t: t.held),
                     wait(process, started))


def per_interval(timings: list[StepTiming], value: Callable[[StepTiming], float]) -> list[float]:
    """`value` summed per interval one worker committed: over its commit and every step since its last one (the
    first claim, claims tried again, waits for a free member); a commit claims the next interval itself."""
    sums, pending = [], 0.0
    for timing in timings:
        pending += value(timing)
        if timing.step == "commit":
            sums.append(pending)
            pending = 0.0
    return sums


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def _repeat(command: list[str]) -> tuple[float, float]:
    """Median wall time and the largest peak memory over REPEATS runs; fails loudly if one fails."""
    runs = [run(command) for _ in range(REPEATS)]
    bad = [r for r in runs if r.returncode != 0]
    if bad:
        raise SystemExit(f"{' '.join(command)} exited {bad[0].returncode}")
    return statistics.median(r.wall for r in runs), max(r.peak_mb for r in runs)


def report(population: int, commits: int, intervals: int, root: Path) -> str:
    load_before = load_average()
    started = time.perf_counter()
    store = generate(root, population, commits)
    generated = time.perf_counter() - started
    os.sync()  # else the kernel writes the generator's gigabyte back while we measure, and every fsync waits
    journal_mb = store.paths.journal.stat().st_size / 1e6
    state_mb = sum(p.stat().st_size for p in store.paths.root.glob("state*")) / 1e6
    rows = []
    for name, args in (("hopt status", ["status"]), ("hopt status --json", ["status", "--json"]),
                       ("hopt best", ["best"]), ("hopt best --json", ["best", "--json"])):
        wall, peak = _repeat(hopt_command(*args, "--dir", str(root)))
        rows.append(f"| `{name}` | {wall:.3f} s | {peak:.0f} MB |")
    worker = measure_worker(root, intervals)
    lines = [
        f"population {population}, {commits:,} commits ({2 * commits:,} journal events): generated in "
        f"{generated:.0f} s; journal {journal_mb:,.0f} MB, snapshot {state_mb:.1f} MB",
        f"load average before: {load_before}; after: {load_average()}",
        "", "| command | wall (median of 3) | peak memory |", "|---|---|---|", *rows,
        "", f"`hopt worker` on it, {len(worker.steps)} no-op intervals (worker exit status "
            f"{worker.measured.returncode}); per interval, its claim and commit (a commit claims the next interval):",
        "", "| | p50 | p99 | max |", "|---|---|---|---|",
        *(f"| {name} | {percentile(v, 50) * 1e3:.1f} ms | {percentile(v, 99) * 1e3:.1f} ms | {max(v) * 1e3:.1f} ms |"
          for name, v in (("claim + commit", worker.steps), ("lock hold", worker.held))),
        "", f"worker start-up to its first claim: {worker.startup:.2f} s; worker peak memory "
            f"{worker.measured.peak_mb:.0f} MB",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=1024)
    parser.add_argument("--commits", type=int, default=1_000_000)
    parser.add_argument("--intervals", type=int, default=100, help="intervals the measured worker trains")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hopt-scale-") as temp:
        root = Path(temp) / "exp"
        machine = Machine.describe(Path(temp))
        print(f"command: `python -m benchmarks.scale {' '.join(sys.argv[1:])}`", machine.markdown(), "", sep="\n")
        print(report(args.population, args.commits, args.intervals, root))


if __name__ == "__main__":
    main()

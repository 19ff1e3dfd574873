"""Chaos: eight real workers SIGKILLed at random moments and restarted until the experiment completes,
under each lock kind.

The kills are spread over the first 85% of the experiment's progress (seeded). Half of them land at a
random moment; the other half are aimed at the critical sections: the victim is whichever worker is
seen holding the experiment lock (flock: /proc/locks; hardlink: the pid in lock.link), killed there, in
the middle of a claim or a commit. Every victim is frozen (SIGSTOP) first, so whether it held the lock,
and which leases it leaves behind, is known exactly. Afterwards
every invariant of DESIGN.md is checked, every lease of the dead was reclaimed, and no commit that a
worker logged is missing from the journal.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.guards import Stall
from tests.invariants import check_finished_experiment

pytestmark = pytest.mark.slow  # real processes for tens of seconds: the second step of CI

WORKERS = 8
SEED = 4
# a hang guard: seconds without a committed interval (a dead worker's lease is reclaimed at once: same host)
PATIENCE = 120.0
RECIPE = toy_recipe(population=8, keep_best=3, worker="tests.hopt_cli.trainables:sleepy_quadratic")
COMMITTED = re.compile(r"member (\d+) interval (\d+) committed score (\S+) in")


class Workers:
    """WORKERS worker processes, each restarted under the same name when it is killed."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root, self.logs = root, logs
        self.starts = [0] * WORKERS
        self.processes = [self._start(i) for i in range(WORKERS)]

    def _start(self, index: int) -> subprocess.Popen:
        self.starts[index] += 1
        log = open(self.logs / f"w{index}-{self.starts[index]}.log", "wb")
        with log:
            return subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(self.root),
                                     "--name", f"w{index}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
                                    env={**os.environ, "HOPT_TEST_SLEEP": "0.03"})

    def restart(self, index: int) -> None:
        self.processes[index] = self._start(index)

    def kill_all(self) -> None:
        """Leave no worker behind when the test fails (a frozen one would wait forever)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def lock_holder(store: Store) -> int | None:
    """The pid holding the experiment lock: a flock on `lock` in /proc/locks, or the pid in lock.link."""
    if store.recipe.lock == "hardlink":
        try:
            return json.loads(store.paths.hardlink_lock.read_text())["holder"]["pid"]
        except (FileNotFoundError, ValueError):
            return None
    inode = store.paths.lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "FLOCK" and int(fields[5].split(":")[-1]) == inode:
            return int(fields[4])
    return None


def frozen(process: subprocess.Popen) -> bool:
    """Whether the SIGSTOP took effect (or the process ended on its own meanwhile)."""
    try:
        state = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("T", "t", "Z")


def leases_of(store: Store, pid: int) -> set[str]:
    """The tokens of the leases `pid` holds."""
    return {info.lease.token for info in store.leases.infos()
            if info.lease is not None and info.lease.holder.pid == pid}


def in_critical_section(store: Store, workers: Workers, patience: float) -> int | None:
    """The index of a worker that holds the lock now, waiting up to `patience` seconds for one."""
    deadline = time.monotonic() + patience
    pids = {process.pid: index for index, process in enumerate(workers.processes)}
    while time.monotonic() < deadline:
        holder = lock_holder(store)
        if holder in pids:
            return pids[holder]
        time.sleep(0.0002)
    return None


def freeze_and_kill(store: Store, process: subprocess.Popen) -> tuple[bool, set[str]] | None:
    """Freeze `process`, note whether it holds the lock and which leases it has, and SIGKILL it.

    Returns (held the lock, lease tokens left behind); None if it finished on its own first."""
    process.send_signal(signal.SIGSTOP)
    while not frozen(process):
        time.sleep(0.0005)
    if process.poll() is not None:
        return None
    held = lock_holder(store) == process.pid
    leases = leases_of(store, process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()  # reap it: a zombie's pid answers kill(pid, 0), so its lease would wait out the timeout
    return held, leases


@pytest.mark.parametrize(("lock", "planned", "intervals"), [("flock", 60, 40), ("hardlink", 30, 20)])
def test_sigkilled_workers_lose_nothing(tmp_path, write_recipe, lock, planned, intervals):
    """flock is the default and gets the long run; the hard-link lock a shorter one (time budget)."""
    root, logs = tmp_path / "exp", tmp_path / "logs"
    logs.mkdir()
    recipe = write_recipe({**RECIPE, "lock": lock, "intervals": intervals})
    init = hopt("init", str(recipe), "--dir", str(root))
    assert init.returncode == 0, init.stderr
    store = Store.open(root)
    rng = random.Random(SEED)
    started = time.monotonic()
    workers = Workers(root, logs)
    kills = in_lock = 0
    leases_left: set[str] = set()
    most_checkpoints = 0
    stall = Stall(PATIENCE)

    total = RECIPE["population"] * intervals
    marks = sorted(rng.uniform(0.0, 0.85 * total) for _ in range(planned))  # kill when this much is done
    try:
        while kills < planned and not store.sync().complete:
            stall.check(store.population.intervals_done, f"{kills} kills made")
            time.sleep(0.005)
            most_checkpoints = max(most_checkpoints, len(os.listdir(store.paths.checkpoints)))
            if store.population.intervals_done < marks[kills]:
                continue
            aimed = in_critical_section(store, workers, patience=2.0) if rng.random() < 0.5 else None
            index = rng.randrange(WORKERS) if aimed is None else aimed
            victim = workers.processes[index]
            if victim.poll() is not None:
                assert victim.returncode == 0, (logs / f"w{index}-{workers.starts[index]}.log").read_text()
                continue
            killed = freeze_and_kill(store, victim)
            if killed is None:
                continue
            in_lock += killed[0]
            leases_left |= killed[1]
            kills += 1
            workers.restart(index)
        while not store.sync().complete and any(p.poll() is None for p in workers.processes):
            stall.check(store.population.intervals_done, f"all {kills} kills made")
            time.sleep(0.05)
        for process in workers.processes:
            process.wait(timeout=PATIENCE)  # a finished experiment: each worker exits at its next claim
    finally:
        workers.kill_all()
    elapsed = time.monotonic() - started

    assert [p.returncode for p in workers.processes] == [0] * WORKERS
    summary = check_finished_experiment(root)
    events = store.journal.read()[0]
    journaled = {(e["member"], e["interval"], f"{e['score']:.6g}") for e in events if e["type"] == "commit"}
    logged = {match.groups() for log in logs.iterdir() for match in COMMITTED.finditer(log.read_text())}
    lost = {(int(m), int(i), s) for m, i, s in logged} - journaled
    tracebacks = [log.name for log in logs.iterdir() if "Traceback" in log.read_text()]
    # on disk: each member's and each best entry's checkpoint, plus per worker the superseded parent of its
    # lease or a checkpoint renamed in by a commit that has not collected yet
    bound = RECIPE["population"] + RECIPE["keep_best"] + WORKERS
    print(f"\nchaos ({lock}): {WORKERS} workers, {kills} SIGKILLs ({in_lock} inside the lock, i.e. mid-claim or "
          f"mid-commit), {sum(workers.starts)} worker starts, {summary.commits} intervals committed, "
          f"{summary.claims} claims, {len(leases_left)} leases left by the dead, {summary.reclaims} reclaimed, "
          f"{summary.releases} released, {summary.failures} failed, lost {len(lost)}, at most {most_checkpoints} "
          f"checkpoints on disk (bound {bound}), {elapsed:.1f} s")
    assert kills >= planned * 2 // 3 and in_lock >= planned // 6
    reclaimed = {e["token"]: e["reason"] for e in events if e["type"] == "reclaim"}
    ended = {e["token"] for e in events if e["type"] in ("commit", "fail", "release")}  # killed after its event
    assert leases_left - ended <= set(reclaimed), leases_left - ended - set(reclaimed)
    # and a victim killed between its claim and its lease file left a claim with no lease: ended as well
    assert all(reclaimed[t].startswith("its claim has no lease file") for t in set(reclaimed) - leases_left)
    assert summary.failures == 0  # a missing parent checkpoint would have failed an interval
    assert not lost and not tracebacks
    assert most_checkpoints <= bound

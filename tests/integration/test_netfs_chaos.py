"""Two nodes, one shared directory on a real network filesystem: workers SIGKILLed at random lose nothing.

Each worker runs as a process of its own "node" (tests/netfs_cluster.node_popen: its own UTS + PID
namespace and hostname), half of them seeing the experiment through one mount of the filesystem and
half through the other, as two machines would. A killed worker's lease can only time out (no other
node can see that its pid is gone). Afterwards every invariant of tests/invariants.py holds, read
through a mount that does not cache; and flock on sshfs, which does not exclude, is refused with one line.
Needs tests/netfs/start-netfs.sh. HOPT_NETFS_CHAOS_RUNS (default 1) runs each scenario that many times.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.guards import Stall
from tests.invariants import check_finished_experiment
from tests.netfs_cluster import MOUNTS, SharedDir, node_kill, node_popen, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.netfs, pytest.mark.usefixtures("netfs")]

NODES = ("node-a", "node-b")
PER_NODE = 2
KILLS = 4
# a hang guard: seconds without a committed interval; a node killed while it holds the hard-link lock
# stalls the rest for about 15 s (the lock is broken by age: no other node can see that its holder is gone)
PATIENCE = 180.0
RUNS = int(os.environ.get("HOPT_NETFS_CHAOS_RUNS", "1"))
RECIPE = toy_recipe(population=6, intervals=15, worker="tests.hopt_cli.trainables:sleepy_quadratic",
                    lease={"timeout": 4, "heartbeat": 1})
UNCACHED = {"glusterfs": None, "sshfs": MOUNTS["sshfs-nocache"].a, "sshfs-nocache": None}


class Cluster:
    """PER_NODE workers on each node, the node's share of them seeing the directory through its mount."""

    def __init__(self, shared: SharedDir, logs: Path) -> None:
        self.shared, self.logs = shared, logs
        self.slots = [(node, i) for node in NODES for i in range(PER_NODE)]
        self.starts = [0] * len(self.slots)
        self.processes = [self._start(slot) for slot in range(len(self.slots))]

    def _start(self, slot: int) -> subprocess.Popen:
        node, index = self.slots[slot]
        self.starts[slot] += 1
        root = (self.shared.a if node == NODES[0] else self.shared.b) / "exp"
        with open(self.logs / f"{node}-{index}-{self.starts[slot]}.log", "wb") as log:
            return node_popen(node, [sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root),
                                     "--name", f"{node}-{index}"], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=log, env={**os.environ, "HOPT_TEST_SLEEP": "0.05"})

    def kill_and_restart(self, slot: int) -> None:
        node_kill(self.processes[slot])
        self.processes[slot] = self._start(slot)

    def stop(self) -> None:
        for process in self.processes:
            node_kill(process)


def _init(root: Path, lock: str) -> subprocess.CompletedProcess:
    recipe = root.parent / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "lock": lock}))
    return hopt("init", str(recipe), "--dir", str(root))


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize(("shared_dir", "lock"), [("glusterfs", "flock"), ("glusterfs", "hardlink"),
                                                  ("sshfs", "hardlink"), ("sshfs-nocache", "hardlink")],
                         indirect=["shared_dir"])
def test_two_nodes_with_random_sigkills_lose_nothing(shared_dir, lock, run, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    init = _init(shared_dir.a / "exp", lock)
    assert init.returncode == 0, init.stderr
    store = Store.open(shared_dir.a / "exp")
    rng = random.Random(run)
    total = RECIPE["population"] * RECIPE["intervals"]
    marks = sorted(rng.uniform(0.05 * total, 0.8 * total) for _ in range(KILLS))
    started = time.monotonic()
    cluster = Cluster(shared_dir, logs)
    kills = 0
    stall = Stall(PATIENCE)
    try:
        while not store.sync().complete and any(p.poll() is None for p in cluster.processes):
            stall.check(store.population.intervals_done, f"of {total}, {kills} node kills made")
            if kills < KILLS and store.population.intervals_done >= marks[kills]:
                cluster.kill_and_restart(rng.randrange(len(cluster.slots)))
                kills += 1
            time.sleep(0.02)  # a progress poll; the workers coordinate among themselves
        codes = [process.wait(timeout=PATIENCE) for process in cluster.processes]
    finally:
        cluster.stop()
    elapsed = time.monotonic() - started

    where = UNCACHED[shared_dir.kind]
    root = (where / shared_dir.name / "exp") if where else shared_dir.a / "exp"
    wait_until(lambda: not (root / "trash").exists() or not os.listdir(root / "trash"), 30, "the trash to empty")
    summary = check_finished_experiment(root)
    text = {log.name: log.read_text() for log in logs.iterdir()}
    discarded = sum(len(re.findall(r"interval \d+ discarded", t)) for t in text.values())
    print(f"\nnetfs chaos ({shared_dir.kind}, {lock}, run {run}): {kills} node kills, {sum(cluster.starts)} worker "
          f"starts, {summary.commits} commits, {summary.claims} claims, {summary.reclaims} reclaims, "
          f"{summary.releases} releases, {discarded} discarded intervals, {elapsed:.1f} s")
    assert codes == [0] * len(codes), {name: t[-2000:] for name, t in text.items() if "experiment complete" not in t}
    assert summary.failures == 0
    assert not [name for name, t in text.items() if "Traceback" in t]


@pytest.mark.parametrize("shared_dir", ["sshfs"], indirect=True)
def test_flock_on_sshfs_is_refused_with_one_line(shared_dir):
    init = _init(shared_dir.a / "exp", "flock")
    assert init.returncode == 0, init.stderr

    worker = hopt("worker", "--dir", str(shared_dir.a / "exp"))

    assert worker.returncode == 2 and worker.stderr.count("\n") == 1, worker.stderr
    assert ("flock does not exclude across sshfs mounts (each mount locks only itself), so workers on two nodes "
            "could both hold the experiment lock; use `lock: hardlink`") in worker.stderr
    assert Store.open(shared_dir.a / "exp").sync().events == 0  # nothing written

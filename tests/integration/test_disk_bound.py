"""Disk use is bounded: checkpoints on disk never exceed population + live leases + keep_best + SLACK.

Sampled from outside while real workers run, to completion and with workers SIGKILLed at random.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.disk import SLACK, DiskWatch
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.invariants import check_finished_experiment

pytestmark = pytest.mark.slow  # real processes for tens of seconds: the second step of CI

NOOP = {"worker": "workers.noop:noop", "space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "keep_best": 2}


def test_checkpoints_on_disk_stay_bounded_during_a_run(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=8, intervals=25, **NOOP))
    root = tmp_path / "exp"

    with DiskWatch(root) as watch:
        result = hopt("run", str(recipe), "--dir", str(root), "--workers", "4")

    assert result.returncode == 0, result.stderr
    assert len(watch.samples) > 20 and watch.most >= 8
    assert watch.excess(8, 2) <= SLACK
    check_finished_experiment(root)


def _worker(root, name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--name", name],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_until_training(root: Path, worker: subprocess.Popen) -> None:
    """Until `worker` holds a lease (bounded), so that killing it leaves one behind."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker.poll() is None:
        for lease in (root / "leases").glob("*.json"):
            try:
                if json.loads(lease.read_text())["holder"]["pid"] == worker.pid:
                    return
            except (OSError, ValueError):
                continue
        time.sleep(0.001)


def test_checkpoints_on_disk_stay_bounded_while_workers_are_killed(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=8, intervals=30, **{**NOOP,
                                                                    "worker": "tests.hopt_cli.trainables:sleepy_noop"}))
    root = tmp_path / "exp"
    assert hopt("init", str(recipe), "--dir", str(root)).returncode == 0
    rng = random.Random(7)

    with DiskWatch(root) as watch:
        workers = [_worker(root, f"w{i}") for i in range(3)]
        for kill in range(5):
            victim = rng.randrange(len(workers))
            _wait_until_training(root, workers[victim])
            time.sleep(rng.uniform(0.0, 0.02))
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            workers[victim] = _worker(root, f"w{victim}-{kill}")
        for worker in workers:
            assert worker.wait(timeout=120) == 0

    assert watch.excess(8, 2) <= SLACK
    summary = check_finished_experiment(root)
    assert summary.reclaims >= 1

"""End to end with real processes: `hopt run` to completion, and a worker SIGKILLed mid-interval."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from tests.conftest import REPO, toy_recipe
from tests.invariants import check_finished_experiment

DEADLINE = 120.0


def hopt(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hopt_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=DEADLINE, **kwargs)


def test_run_with_four_workers_completes_with_every_invariant(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=8, intervals=12))
    root = tmp_path / "exp"

    result = hopt("run", str(recipe), "--dir", str(root), "--workers", "4")

    assert result.returncode == 0, result.stderr
    assert "done: best score" in result.stdout
    summary = check_finished_experiment(root)
    assert summary.commits <= 8 * 12  # exploits let a member jump to its parent's interval
    assert summary.failures == summary.reclaims == 0
    logs = sorted(p.name for p in (root / "logs").iterdir())
    assert logs == [f"local-{i}.log" for i in range(4)]
    optimum = 1.2 - 2 * (0.9 * 0.98 ** (12 * 4)) ** 2  # h = (1, 1) throughout: the fastest possible ascent
    assert Experiment(root).best().score > optimum - 0.05


def test_run_again_on_a_complete_experiment_is_a_no_op(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=4, intervals=3))
    root = tmp_path / "exp"
    assert hopt("run", str(recipe), "--dir", str(root), "--workers", "2").returncode == 0
    size = (root / "journal.jsonl").stat().st_size

    again = hopt("run", str(recipe), "--dir", str(root), "--workers", "2")

    assert again.returncode == 0, again.stderr
    assert (root / "journal.jsonl").stat().st_size == size


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    """Wait until the worker announces it is inside the interval (bounded; fails if it exited)."""
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the worker never reached the blocking interval"
        time.sleep(0.01)


def test_worker_killed_mid_interval_and_restarted_loses_nothing(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=4, intervals=6, worker="tests.hopt_cli.trainables:block_once"))
    root = tmp_path / "exp"
    marker = tmp_path / "inside-interval"
    env = {**os.environ, "HOPT_TEST_MARKER": str(marker)}
    assert hopt("init", str(recipe), "--dir", str(root)).returncode == 0
    victim = subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--name", "victim"],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(marker, victim)

    victim.send_signal(signal.SIGKILL)
    victim.wait()
    lease = Store.open(root).paths.lease(0)
    assert lease.exists(), "the killed worker's lease should still be on disk"
    survivor = hopt("worker", "--dir", str(root), "--name", "survivor", env=env)

    assert survivor.returncode == 0, survivor.stderr
    assert "reclaimed lease 00000.json: its holder" in survivor.stderr
    summary = check_finished_experiment(root)
    assert summary.commits <= 4 * 6
    assert summary.reclaims == 1

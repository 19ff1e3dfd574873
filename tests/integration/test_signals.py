"""Stop signals on real worker processes: the interval in flight ends or is abandoned, the lease is
released at once, the worker says why and exits 0, and with --requeue a preempted one requeues itself."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.slurm_cluster import wait_for

pytestmark = pytest.mark.slow  # real processes for tens of seconds: the second step of CI

DEADLINE = 60.0
STOP_WITHIN = 10.0  # seconds from the signal to the worker's exit; the trainables here would run forever


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped counts as gone)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def start_worker(tmp_path: Path, write_recipe, recipe: dict, *options: str,
                 env: dict | None = None) -> tuple[subprocess.Popen, Path, int]:
    """Init the experiment, start `hopt worker`, and wait until its trainable announces the interval."""
    root, marker = tmp_path / "exp", tmp_path / "marker"
    init = hopt("init", str(write_recipe(recipe)), "--dir", str(root))
    assert init.returncode == 0, init.stderr
    worker = subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), *options], cwd=REPO,
                              env={**os.environ, **(env or {}), "HOPT_TEST_MARKER": str(marker)},
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: marker.exists() or worker.poll() is not None, DEADLINE, "the interval to start", poll=0.02)
    assert worker.poll() is None, worker.stderr.read()
    return worker, root, int(marker.read_text())


def stop(worker: subprocess.Popen, signum: int) -> str:
    """Send `signum`, check the worker exits 0 promptly, and return its log."""
    sent = time.monotonic()
    worker.send_signal(signum)
    _, log = worker.communicate(timeout=DEADLINE)
    assert time.monotonic() - sent < STOP_WITHIN
    assert worker.returncode == 0, log
    return log


def released_at_once(root: Path) -> dict:
    """The member in flight was given back (a `release` event), and no lease is left."""
    events = [json.loads(line) for line in (root / "journal.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events[-2:]] == ["claim", "release"]
    assert events[-1]["reason"] == "stop requested"
    assert not list(Store.open(root).paths.leases.iterdir())
    return events[-1]


def test_the_preemption_signal_ends_a_python_interval_that_checks_should_stop(tmp_path, write_recipe):
    recipe = toy_recipe(population=2, intervals=2, worker="tests.hopt_cli.trainables:blocks_until_stopped")
    worker, root, _ = start_worker(tmp_path, write_recipe, recipe, "--name", "w")

    log = stop(worker, signal.SIGUSR1)

    assert released_at_once(root)["member"] == 0
    assert "released at once (stop requested)" in log
    assert "stopped by SIGUSR1: 0 intervals committed" in log


def test_sigterm_abandons_an_isolated_interval_that_ignores_should_stop(tmp_path, write_recipe):
    recipe = toy_recipe(population=2, intervals=2, interval_timeout=600,
                        worker="tests.hopt_cli.trainables:blocks_ignoring_stop")
    worker, root, child = start_worker(tmp_path, write_recipe, recipe)
    assert child != worker.pid  # the interval runs in the child process

    log = stop(worker, signal.SIGTERM)

    released_at_once(root)
    assert not alive(child)
    assert "stopped by SIGTERM" in log


def test_a_command_trainable_gets_the_stop_forwarded(tmp_path, write_recipe):
    recipe = toy_recipe(population=2, intervals=2, worker=None,
                        command='echo $$ > "$HOPT_TEST_MARKER.tmp" && mv "$HOPT_TEST_MARKER.tmp" "$HOPT_TEST_MARKER"'
                                "; sleep 600; echo unreachable {parent} {out}")
    del recipe["worker"]
    worker, root, shell = start_worker(tmp_path, write_recipe, recipe)

    stop(worker, signal.SIGUSR1)

    released_at_once(root)
    assert not alive(shell)


@pytest.mark.parametrize(("signum", "options", "requeued"), [
    (signal.SIGUSR1, (), True),
    (signal.SIGTERM, (), False),  # a cancel, not a preemption: the task must not come back
    (signal.SIGUSR2, ("--preempt-signal", "USR2"), True),
], ids=["USR1", "TERM", "USR2"])
def test_requeue_when_preempted(tmp_path, write_recipe, signum, options, requeued):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol-calls"
    fake = bin_dir / "scontrol"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5",
           "SLURM_ARRAY_TASK_ID": "2"}
    recipe = toy_recipe(population=2, intervals=2, worker="tests.hopt_cli.trainables:blocks_until_stopped")
    worker, root, _ = start_worker(tmp_path, write_recipe, recipe, "--requeue", *options, env=env)

    log = stop(worker, signum)

    assert released_at_once(root)["worker"] == "slurm-5_2"
    if requeued:
        assert calls.read_text() == "requeue 5_2\n"
        assert "preempted with work left: requeueing SLURM job 5_2" in log
    else:
        assert not calls.exists()


def test_the_child_dies_with_a_sigkilled_worker(tmp_path, write_recipe):
    recipe = toy_recipe(population=2, intervals=2, interval_timeout=600,
                        worker="tests.hopt_cli.trainables:blocks_ignoring_stop")
    worker, _, child = start_worker(tmp_path, write_recipe, recipe)

    worker.kill()
    worker.wait()

    wait_for(lambda: not alive(child), DEADLINE, "the orphaned child to die", poll=0.02)

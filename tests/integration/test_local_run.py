"""End to end with real processes: `hopt run` to completion, and a worker SIGKILLed mid-interval."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.integration.test_signals import alive
from tests.invariants import check_finished_experiment
from tests.slurm_cluster import wait_for

pytestmark = pytest.mark.slow  # real processes for tens of seconds: the second step of CI

DEADLINE = 120.0


def test_run_with_four_workers_completes_with_every_invariant(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=8, intervals=12))
    root = tmp_path / "exp"

    result = hopt("run", str(recipe), "--dir", str(root), "--workers", "4")

    assert result.returncode == 0, result.stderr
    assert "done: best score" in result.stdout
    summary = check_finished_experiment(root)
    assert summary.commits <= 8 * 12  # exploits let a member jump to its parent's interval
    assert summary.failures == summary.reclaims == 0
    logs = sorted(p.name for p in (root / "logs").iterdir() if p.is_file())  # logs/members: one per interval
    assert len(logs) == 4 and len({log.rsplit("-", 1)[0] for log in logs}) == 1  # local-<runner pid>-<i>.log
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


def _start_run(tmp_path: Path, write_recipe, env: dict | None = None) -> tuple[subprocess.Popen, Path, dict]:
    """`hopt run` with 2 workers whose first intervals wait; returns it once both are inside one."""
    recipe = write_recipe(toy_recipe(population=4, intervals=3, worker="tests.hopt_cli.trainables:waits_for_go"))
    root, markers = tmp_path / "exp", tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "HOPT_TEST_MARKER": str(markers), "HOPT_TEST_GO": str(tmp_path / "go"), **(env or {})}
    run = subprocess.Popen([sys.executable, "-m", "hopt_cli", "run", str(recipe), "--dir", str(root), "--workers", "2"],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    announced = lambda: [p for p in markers.iterdir() if not p.name.startswith(".")]  # noqa: E731
    wait_for(lambda: len(announced()) == 2 or run.poll() is not None, DEADLINE, "both workers' intervals", poll=0.02)
    assert run.poll() is None, run.communicate()
    names = {int(p.name): Path(f"/proc/{p.name}/cmdline").read_text().split("\0")[-2] for p in announced()}
    return run, recipe, names


def _finish(tmp_path: Path, recipe: Path) -> None:
    """Let the intervals go on and run the experiment to its end with every invariant."""
    (tmp_path / "go").touch()
    again = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "2",
                 env={**os.environ, "HOPT_TEST_MARKER": str(tmp_path / "markers"), "HOPT_TEST_GO": str(tmp_path / "go")})
    assert again.returncode == 0, again.stderr
    check_finished_experiment(tmp_path / "exp")


def test_a_killed_second_worker_is_reaped_and_its_member_taken_over_at_once(tmp_path, write_recipe):
    run, _, names = _start_run(tmp_path, write_recipe)
    second = next(pid for pid, name in names.items() if name.endswith("-1"))

    os.kill(second, signal.SIGKILL)

    wait_for(lambda: not Path(f"/proc/{second}").exists(), DEADLINE, "hopt run to reap its killed worker", poll=0.05)
    (tmp_path / "go").touch()
    _, stderr = run.communicate(timeout=DEADLINE)
    assert run.returncode == 0, stderr  # within the lease timeout of 300 s: the dead worker's lease went at once
    summary = check_finished_experiment(tmp_path / "exp")
    assert summary.reclaims == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_signal_to_hopt_run_stops_its_workers_and_releases_their_members(tmp_path, write_recipe, signum):
    run, recipe, names = _start_run(tmp_path, write_recipe)

    run.send_signal(signum)

    _, stderr = run.communicate(timeout=DEADLINE)
    assert run.returncode == 130 and f"stopped by {signum.name}" in stderr, stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in names)
    assert not list((tmp_path / "exp" / "leases").iterdir())
    events = [json.loads(line) for line in (tmp_path / "exp" / "journal.jsonl").read_text().splitlines()]
    assert sorted(e["type"] for e in events[-2:]) == ["release", "release"]
    _finish(tmp_path, recipe)


def test_a_second_ctrl_c_kills_workers_that_do_not_stop(tmp_path, write_recipe):
    run, recipe, names = _start_run(tmp_path, write_recipe, env={"HOPT_TEST_IGNORE_STOP": "1"})

    run.send_signal(signal.SIGINT)
    wait_for(lambda: "a second signal kills them" in run.stderr.readline(), DEADLINE, "the first stop", poll=0)
    run.send_signal(signal.SIGINT)

    _, stderr = run.communicate(timeout=DEADLINE)
    assert run.returncode == 130 and "stopped by SIGINT" in stderr, stderr
    assert not any(Path(f"/proc/{pid}").exists() for pid in names)
    assert len(list((tmp_path / "exp" / "leases").iterdir())) == 2  # killed in their intervals
    _finish(tmp_path, recipe)  # the killed workers' leases are reclaimed at once: their pids are gone


def test_workers_stop_when_hopt_run_itself_is_killed(tmp_path, write_recipe):
    run, recipe, names = _start_run(tmp_path, write_recipe)

    run.kill()
    run.communicate(timeout=DEADLINE)

    wait_for(lambda: not any(alive(pid) for pid in names), DEADLINE, "the orphaned workers to stop", poll=0.05)
    assert not list((tmp_path / "exp" / "leases").iterdir())  # each released its member on the SIGTERM
    _finish(tmp_path, recipe)


def test_a_straggler_behind_finished_members_takes_over_the_best_lineage(tmp_path, write_recipe):
    """The issue's case: member 3's worker dies; when it is reclaimed every other member has finished."""
    recipe = write_recipe(toy_recipe(population=4, intervals=8, worker="tests.hopt_cli.trainables:straggles"))
    root = tmp_path / "exp"
    assert hopt("init", str(recipe), "--dir", str(root)).returncode == 0
    marker = tmp_path / "straggler-pid"
    env = {**os.environ, "HOPT_TEST_MARKER": str(marker)}
    workers = [subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--name", name],
                                cwd=REPO, env=env, stderr=subprocess.DEVNULL) for name in ("a", "b")]
    store = Store.open(root)
    try:
        wait_for(marker.exists, DEADLINE, "member 3 to hang in interval 1")
        wait_for(lambda: all(m.interval == 8 for m in store.sync().members if m.member != 3), DEADLINE,
                 "every other member to finish")
        (killed,) = [w for w in workers if w.pid == int(marker.read_text())]
        killed.kill()
        killed.wait()  # reaped: no zombie holds its pid, so the survivor sees the holder gone at once
        (survivor,) = [w for w in workers if w is not killed]
        assert survivor.wait(timeout=DEADLINE) == 0
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()

    check_finished_experiment(root)
    events = [e for e in store.journal.read()[0] if e["member"] == 3 and e["type"] in ("commit", "adopt")]
    assert [e["type"] for e in events] == ["commit", "commit", "adopt"], "the straggler trained on alone"
    population = store.sync()
    adopted = population.members[events[-1]["decision"]["parent"]]
    assert population.members[3].lineage.scores == adopted.lineage.scores
    assert population.members[3].checkpoint == adopted.checkpoint
    shown = hopt("log", "--dir", str(root), "--member", "3").stdout.splitlines()[-1]
    assert shown.endswith(f"adopt    member 3 takes over member {adopted.member}'s finished lineage "
                          f"(score {adopted.lineage.scores[-1]:.6g})"), shown


def test_status_counts_a_killed_worker_dead_at_once(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=2, intervals=2, worker="tests.hopt_cli.trainables:waits_for_go"))
    root, markers = tmp_path / "exp", tmp_path / "markers"
    markers.mkdir()
    assert hopt("init", str(recipe), "--dir", str(root)).returncode == 0
    env = {**os.environ, "HOPT_TEST_MARKER": str(markers), "HOPT_TEST_GO": str(tmp_path / "go")}
    worker = subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--name", "doomed"],
                              cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(not p.name.startswith(".") for p in markers.iterdir()), DEADLINE, "the interval")
    finally:
        worker.kill()
        worker.wait()

    status = json.loads(hopt("status", "--dir", str(root), "--json").stdout)
    table = hopt("status", "--dir", str(root)).stdout.splitlines()

    lease = status["members"][0]["lease"]
    assert (lease["gone"], lease["stale"], lease["age"] < 60) == (True, True, True)
    assert status["live_workers"] == [] and status["stale_workers"] == ["doomed"] and status["eta"] is None
    assert table[1].endswith("ETA -, workers: 0 live, 1 stale") and " DEAD doomed " in table[3]


@pytest.mark.parametrize("visible, gpus, expected", [
    # three workers on two GPUs, round-robin; without CUDA_VISIBLE_DEVICES, --gpus counts the GPUs torch sees
    pytest.param(None, "0,1", ["0", "1", "0"], marks=pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="--gpus 0,1 without CUDA_VISIBLE_DEVICES needs two GPUs torch sees")),
    ("5,7", "1,0", ["7", "5", "7"]),  # numbers count among the visible devices (e.g. a SLURM allocation)
    ("4,6", "all", ["4", "6", "4"]),
], ids=["ids", "among-visible", "all-visible"])
def test_each_worker_sees_its_own_gpu_and_a_share_of_the_cores(tmp_path, write_recipe, visible, gpus, expected):
    """Checked through each worker's environment: this machine may have no GPU at all."""
    recipe = write_recipe(toy_recipe(population=6, intervals=3, worker="tests.hopt_cli.trainables:reports_devices"))
    root = tmp_path / "exp"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    (tmp_path / "marker").mkdir()
    env.update(HOPT_TEST_MARKER=str(tmp_path / "marker"), HOPT_TEST_WORKERS="3")
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible

    result = hopt("run", str(recipe), "--dir", str(root), "--workers", "3", "--gpus", gpus, env=env)

    assert result.returncode == 0, result.stderr
    assert f"GPUs {','.join(expected[:2])}" in result.stderr
    seen = {c.worker: c.metrics["cuda_visible_devices"] for c in Experiment(root).history()}
    assert [seen[name] for name in sorted(seen, key=lambda n: int(n.rsplit("-", 1)[1]))] == expected
    threads = {c.metrics["omp_num_threads"] for c in Experiment(root).history()}
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 3))}  # the cores hopt may run on


def test_gpus_all_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe())
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

    result = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--gpus", "all", env=env)

    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--gpus all: no GPU is visible here" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "exp").exists()

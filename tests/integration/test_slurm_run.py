"""A worker array on a real SLURM cluster: `hopt slurm --submit`, then mid-interval one task is cancelled,
one requeued by the operator and one preempted (it requeues itself); the experiment completes with every
invariant. Needs the cluster of tests/slurm/start-cluster.sh (HOPT_SLURM_CPUS=4 runs all four at once)."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

import pytest

from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.invariants import check_finished_experiment
from tests.slurm_cluster import job_states, wait_for, wait_until_finished

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.usefixtures("cluster")]

TIMEOUT = 300.0  # a hang guard for the whole array (a requeued task waits ~15 s on the suite's cluster)


def training(store: Store, worker: str) -> bool:
    """Whether `worker` holds a lease, i.e. is inside an interval."""
    return any(info.lease is not None and info.lease.holder.worker == worker for info in store.leases.infos())


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_a_worker_array_survives_cancel_requeue_and_preemption(tmp_path, write_recipe):
    root = tmp_path / "exp"
    recipe = toy_recipe(population=4, intervals=20, worker="tests.hopt_cli.trainables:sleepy_quadratic")
    assert hopt("init", str(write_recipe(recipe)), "--dir", str(root)).returncode == 0
    store = Store.open(root)
    started = time.monotonic()

    submitted = hopt("slurm", "--dir", str(root), "--array", "4", "--time", "00:10:00", "--grace", "60",
                     "--setup", f"cd {shlex.quote(str(REPO))}", "--setup", "export HOPT_TEST_SLEEP=0.3",
                     "--command", f"{shlex.quote(sys.executable)} -m hopt_cli worker", "--submit")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    task = {i: f"{job}_{i}" for i in range(4)}
    timings = {}
    try:
        wait_for(lambda: training(store, f"slurm-{task[0]}"), 60, "task 0 to train", poll=0.05)
        timings["first interval"] = time.monotonic() - started
        run("scancel", task[0])  # the operator cancels: SIGTERM, the worker releases and exits
        wait_for(lambda: training(store, f"slurm-{task[1]}"), 60, "task 1 to train", poll=0.05)
        run("scontrol", "requeue", task[1])  # the operator requeues: SIGTERM now, the task runs again later
        wait_for(lambda: training(store, f"slurm-{task[2]}"), 60, "task 2 to train", poll=0.05)
        run("scancel", "--batch", "--signal=USR1", task[2])  # what --signal=B:USR1@grace does before the limit
        timings["acted"] = time.monotonic() - started

        wait_for(lambda: store.sync().complete, TIMEOUT, "the experiment to complete")
        timings["complete"] = time.monotonic() - started
        wait_until_finished(job, TIMEOUT)
        timings["array finished"] = time.monotonic() - started
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    print("\nslurm:", ", ".join(f"{k} at {v:.1f} s" for k, v in timings.items()))

    summary = check_finished_experiment(root)
    assert summary.failures == 0
    events = store.journal.read()[0]
    released = {e["worker"] for e in events if e["type"] == "release" and e["reason"] == "stop requested"}
    assert {f"slurm-{task[i]}" for i in range(3)} <= released
    log = {i: store.paths.log(f"slurm-{task[i]}").read_text() for i in range(4)}
    assert "stopped by SIGTERM" in log[0] and "DUE TO JOB REQUEUE" not in log[0]
    assert "stopped by SIGTERM" in log[1] and "DUE TO JOB REQUEUE" in log[1]
    assert "stopped by SIGUSR1" in log[2] and f"preempted with work left: requeueing SLURM job {task[2]}" in log[2]
    for i in (1, 2, 3):  # the requeued tasks came back and ended with the experiment
        assert log[i].rstrip().splitlines()[-1].endswith(" committed, 0 failed, 0 discarded"), log[i]
        assert "experiment complete" in log[i]
    assert "Traceback" not in "".join(log.values())
    states = job_states(job)
    assert states == [] or sorted(states) == ["CANCELLED", "COMPLETED", "COMPLETED", "COMPLETED"], states
    assert json.loads((root / "state.json").read_text())["population"]["failed"] is None


def test_a_task_submitted_from_anywhere_runs_the_projects_trainable(tmp_path):
    """The issue's case: `cd /tmp && hopt slurm --submit` with no hopt on PATH, a trainable of the project."""
    project = tmp_path / "my project"
    project.mkdir()
    (project / "mytrain.py").write_text("from workers.toys import pbt_quadratic as train\n")
    recipe = project / "recipe.yaml"
    recipe.write_text(json.dumps(toy_recipe(population=2, intervals=3, worker="mytrain:train")))
    root = tmp_path / "exp"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # workers.toys, but not mytrain
    init = subprocess.run([sys.executable, "-m", "hopt_cli", "init", str(recipe), "--dir", str(root)], cwd=project,
                          env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr

    submitted = subprocess.run([sys.executable, "-m", "hopt_cli", "slurm", "--dir", str(root), "--array", "1",
                                "--time", "00:05:00", "--submit"], cwd="/tmp", env=env, capture_output=True,
                               text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    try:
        wait_until_finished(job, TIMEOUT)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)

    log = Store.open(root).paths.log(f"slurm-{job}_0").read_text()
    assert "experiment complete" in log, log
    assert check_finished_experiment(root).failures == 0


def test_a_task_of_two_workers_passes_the_preemption_to_both_and_requeues_once(tmp_path, write_recipe):
    root, markers, go = tmp_path / "exp", tmp_path / "markers", tmp_path / "go"
    markers.mkdir()
    recipe = toy_recipe(population=4, intervals=3, worker="tests.hopt_cli.trainables:waits_for_go")
    assert hopt("init", str(write_recipe(recipe)), "--dir", str(root)).returncode == 0
    store = Store.open(root)
    allocation = f"export CUDA_VISIBLE_DEVICES=0,1 HOPT_TEST_MARKER={shlex.quote(str(markers))} " \
                 f"HOPT_TEST_GO={shlex.quote(str(go))}"  # as SLURM sets it for --gres=gpu:2

    submitted = hopt("slurm", "--dir", str(root), "--array", "1", "--workers-per-task", "2", "--time", "00:10:00",
                     "--setup", f"cd {shlex.quote(str(REPO))}", "--setup", allocation,
                     "--command", f"{shlex.quote(sys.executable)} -m hopt_cli worker", "--submit")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    task = f"{job}_0"
    workers = [f"slurm-{task}-0", f"slurm-{task}-1"]
    try:
        announced = lambda: [p for p in markers.iterdir() if not p.name.startswith(".")]  # noqa: E731
        wait_for(lambda: len(announced()) == 2, 60, "both workers of the task inside an interval", poll=0.05)
        run("scancel", "--batch", "--signal=USR1", task)  # what --signal=B:USR1@grace does before the limit
        wait_for(lambda: "requeueing SLURM job" in store.paths.log(f"slurm-{task}").read_text(), 60,
                 "the task to requeue itself")
        go.touch()
        wait_for(lambda: store.sync().complete, TIMEOUT, "the experiment to complete")
        wait_until_finished(job, TIMEOUT)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)

    check_finished_experiment(root)
    log = store.paths.log(f"slurm-{task}").read_text()
    assert log.count(f"starting 2 workers on GPUs 0,1: {', '.join(workers)}") == 2  # once more after the requeue
    assert f"stopped by SIGUSR1: {workers[0]} exit 0, {workers[1]} exit 0" in log
    assert log.count(f"preempted with work left: requeueing SLURM job {task}") == 1
    assert "experiment complete" in log.rstrip().splitlines()[-1] and "Traceback" not in log
    released = [e for e in store.read_events()[0] if e.kind == "release"]
    assert sorted(e.worker for e in released) == workers and {e.reason for e in released} == {"stop requested"}
    for name in workers:
        assert "stopped by SIGTERM" in store.paths.log(name).read_text()

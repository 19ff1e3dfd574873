"""`hopt worker --workers K`: K real worker processes in one task's place, one per GPU it was given."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from tests.conftest import REPO, toy_recipe
from tests.invariants import check_finished_experiment
from tests.slurm_cluster import wait_for

pytestmark = pytest.mark.slow  # real processes for tens of seconds: the second step of CI

DEADLINE = 120.0


def group(root: Path, recipe: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hopt_cli", "worker", "--dir", str(root), "--recipe", str(recipe),
                             "--name", "task", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_each_worker_of_a_task_gets_one_of_its_gpus_a_share_of_its_cores_and_a_log(tmp_path, write_recipe):
    """Checked through each worker's environment: this machine may have no GPU at all."""
    recipe = write_recipe(toy_recipe(population=6, intervals=3, worker="tests.hopt_cli.trainables:reports_devices"))
    root = tmp_path / "exp"
    (tmp_path / "marker").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(CUDA_VISIBLE_DEVICES="4,6,7", HOPT_TEST_MARKER=str(tmp_path / "marker"), HOPT_TEST_WORKERS="3")

    process = group(root, recipe, env, "--workers", "3")
    _, stderr = process.communicate(timeout=DEADLINE)

    assert process.returncode == 0, stderr
    assert "starting 3 workers on GPUs 4,6,7: task-0, task-1, task-2" in stderr
    assert "experiment complete: task-0 exit 0, task-1 exit 0, task-2 exit 0" in stderr
    seen = {c.worker: c.metrics["cuda_visible_devices"] for c in Experiment(root).history()}
    assert seen == {"task-0": "4", "task-1": "6", "task-2": "7"}  # every worker committed, on its own GPU
    threads = {c.metrics["omp_num_threads"] for c in Experiment(root).history()}
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 3))}
    paths = Store.open(root).paths
    for name in seen:
        assert f"{name} INFO experiment complete" in paths.log(name).read_text()
    check_finished_experiment(root)


def test_a_stop_signal_reaches_every_worker_of_the_task_and_each_releases_its_member(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=4, intervals=3, worker="tests.hopt_cli.trainables:waits_for_go"))
    root, markers = tmp_path / "exp", tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "HOPT_TEST_MARKER": str(markers), "HOPT_TEST_GO": str(tmp_path / "go")}
    process = group(root, recipe, env, "--workers", "2", "--preempt-signal", "USR2")
    try:
        announced = lambda: [p for p in markers.iterdir() if not p.name.startswith(".")]  # noqa: E731
        wait_for(lambda: len(announced()) == 2 or process.poll() is not None, DEADLINE, "both workers' intervals",
                 poll=0.02)
        assert process.poll() is None, process.communicate()

        process.send_signal(signal.SIGUSR2)  # the preemption signal, as sbatch --signal=B: sends it
        _, stderr = process.communicate(timeout=DEADLINE)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == 0, stderr
    assert "stopped by SIGUSR2: task-0 exit 0, task-1 exit 0" in stderr
    released = [e for e in Store.open(root).read_events()[0] if e.kind == "release"]
    assert sorted(e.worker for e in released) == ["task-0", "task-1"]
    assert {e.reason for e in released} == {"stop requested"}


def test_requeue_of_a_group_outside_slurm_is_refused_before_anything_starts(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}

    process = group(tmp_path / "exp", recipe, env, "--workers", "2", "--requeue")
    _, stderr = process.communicate(timeout=DEADLINE)

    assert process.returncode == 2
    assert stderr.strip() == "hopt: error: --requeue needs a SLURM job (no SLURM_JOB_ID here); drop --requeue outside SLURM"
    assert not (tmp_path / "exp").exists()

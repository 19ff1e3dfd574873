"""hopt_cli.runner: which device each local worker gets from `--gpus`, and what becomes of a worker that dies."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hopt_cli.errors import HoptError
from hopt_cli.events import Commit
from hopt_cli.isolation import POISONED_EXIT
import hopt_cli
from hopt_cli import launch
from hopt_cli.runner import choose_gpus, default_gpus, mig_devices, worker_environment
from hopt_cli.store import Store
from tests.commands import hopt
from tests.conftest import REPO, toy_recipe
from tests.invariants import check_finished_experiment
from tests.slurm_cluster import wait_for


def no_count() -> int:
    raise AssertionError("torch is asked only where CUDA_VISIBLE_DEVICES is not set")


@pytest.mark.parametrize("spec, visible, count, expected", [
    ("0,1,2,3", None, lambda: 4, ["0", "1", "2", "3"]),
    ("GPU-8c2b,GPU-91aa", None, lambda: 2, ["GPU-8c2b", "GPU-91aa"]),
    ("1", "2,3", no_count, ["3"]),
    ("all", "2, 3", no_count, ["2", "3"]),
    ("all", None, lambda: 2, ["0", "1"]),
])
def test_devices(spec, visible, count, expected):
    assert choose_gpus(spec, visible, count) == expected


@pytest.mark.parametrize("spec, visible, count, problem", [
    ("all", None, lambda: 0, "no GPU is visible here"),
    ("all", "", no_count, "no GPU is visible here"),
    ("0,0", None, no_count, "distinct device numbers"),
    ("0,,1", None, no_count, "distinct device numbers"),
    ("2", "4,5", no_count, "numbered 0 to 1 here"),
    ("7", None, lambda: 0, "no GPU is visible here .torch sees none.; leave out --gpus to train on the CPU"),
    ("GPU-8c2b", None, lambda: 0, "no GPU is visible here"),
    ("1,7", None, lambda: 2, "torch sees 2 GPUs here, numbered 0 to 1"),
    ("0", "", no_count, "CUDA_VISIBLE_DEVICES='' hides every GPU"),
])
def test_a_bad_spec_is_one_line_naming_the_fix(spec, visible, count, problem):
    with pytest.raises(HoptError, match=problem) as caught:
        choose_gpus(spec, visible, count)
    assert "\n" not in str(caught.value)


def test_workers_number_gpus_as_nvidia_smi_does_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert worker_environment(2, "1")["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    assert worker_environment(2, "1")["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"


MIG_LISTING = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 3g.20gb     Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0b7a6d1e-7b5f-4f0e-9d7c-2b2f6a3c1d11)
"""


def test_mig_slices_are_each_a_device_and_a_gpu_without_any_is_one():
    assert mig_devices(MIG_LISTING) == ["MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
                                        "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb",
                                        "GPU-0b7a6d1e-7b5f-4f0e-9d7c-2b2f6a3c1d11"]
    assert mig_devices(MIG_LISTING.splitlines(keepends=True)[-1]) == [] and mig_devices("") == []


TWO_GPUS = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1f8e1c4b-0000-0000-0000-000000000000)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2a7d3e5f-0000-0000-0000-000000000000)
"""


def no_listing() -> str:
    raise AssertionError("nvidia-smi is asked only where CUDA_VISIBLE_DEVICES is not set")


@pytest.mark.parametrize("workers, visible, listing, expected", [
    (4, None, lambda: TWO_GPUS, ["0", "1"]),
    (2, "3,5", no_listing, ["3", "5"]),
    (2, None, lambda: MIG_LISTING, ["MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
                                    "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb",
                                    "GPU-0b7a6d1e-7b5f-4f0e-9d7c-2b2f6a3c1d11"]),
    (2, None, lambda: TWO_GPUS.splitlines()[0], []),  # one GPU: every worker on it, as CUDA does anyway
    (2, None, lambda: "", []),  # no nvidia-smi: no GPU counted, torch not imported
    (2, "", no_listing, []),
    (1, None, no_listing, []),  # one worker: nothing to share out
])
def test_without_gpus_each_worker_gets_its_own_of_several_visible_gpus(workers, visible, listing, expected):
    assert default_gpus(workers, visible, listing) == expected


def gpu_of(ctx) -> dict:
    """A trainable that reports the GPU its worker was given."""
    return {"score": 1.0, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "none")}


def test_hopt_run_without_gpus_on_two_gpus_shares_them_round_robin_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(launch, "_nvidia_smi_list", lambda: TWO_GPUS)

    hopt_cli.run(toy_recipe(population=3, intervals=1), tmp_path / "exp", workers=3, trainable=gpu_of)

    commits = [e for e in Store.open(tmp_path / "exp").read_events()[0] if isinstance(e, Commit)]
    assert len(commits) == 3
    assert all(e.metrics["gpu"] == str(int(e.worker.rsplit("-", 1)[1]) % 2) for e in commits)  # local-PID-i: i % 2
    assert "GPUs 0,1 (shared round-robin, as workers outnumber them, since --gpus was not given; --gpus chooses)" \
        in capsys.readouterr().err


def test_hopt_run_on_gpus_of_a_machine_without_any_stops_before_training(tmp_path, write_recipe, monkeypatch):
    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    result = hopt("run", str(write_recipe(toy_recipe())), "--dir", str(tmp_path / "exp"), "--gpus", "7")

    assert result.returncode == 2
    assert result.stderr == ("hopt: error: --gpus 7: no GPU is visible here (torch sees none); leave out --gpus to "
                             "train on the CPU\n")
    assert not (tmp_path / "exp").exists()


def start_run(recipe: Path, root: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hopt_cli", "run", str(recipe), "--dir", str(root),
                             "--workers", "2"], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def holder_of(root: Path, pid: int) -> str:
    """The name of the worker whose process `pid` holds a lease."""
    return next(i.lease.holder.worker for i in Store.open(root).leases.infos() if i.lease and i.lease.holder.pid == pid)


@pytest.mark.slow  # three worker processes, each importing torch: half a minute on two busy cores
def test_a_worker_killed_by_sigkill_is_named_and_replaced_and_the_run_completes(tmp_path, write_recipe):
    root, markers, go = tmp_path / "exp", tmp_path / "markers", tmp_path / "go"
    markers.mkdir()
    recipe = write_recipe(toy_recipe(population=4, intervals=2, worker="tests.hopt_cli.trainables:waits_for_go"))
    run = start_run(recipe, root, HOPT_TEST_MARKER=str(markers), HOPT_TEST_GO=str(go))
    try:
        inside = lambda: [int(p.name) for p in markers.iterdir() if not p.name.startswith(".")]  # noqa: E731
        wait_for(lambda: len(inside()) == 2, 60, "both workers inside an interval", poll=0.05)
        victim = inside()[0]
        name = holder_of(root, victim)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(inside()) == 3, 60, "a replacement inside an interval", poll=0.05)
        go.touch()
        _, stderr = run.communicate(timeout=120)
    finally:
        run.kill()

    assert run.returncode == 0, stderr
    assert (f"worker {name} died (killed by SIGKILL); its log: {root / 'logs' / name}.log; starting {name}-r1 in its "
            "place (replacement 1 of at most 2)") in stderr
    store = Store.open(root)
    assert {e.worker for e in store.read_events()[0] if isinstance(e, Commit)} >= {f"{name}-r1"}
    assert "experiment complete" in store.paths.log(f"{name}-r1").read_text()
    check_finished_experiment(root)


@pytest.mark.slow  # five worker processes, each importing torch: half a minute on two busy cores
def test_deaths_past_one_replacement_per_worker_stop_the_run_with_the_last_one(tmp_path, write_recipe):
    """Member 0 kills whichever worker trains it, as an out-of-memory kill would, every time."""
    recipe = write_recipe(toy_recipe(population=4, intervals=2, worker="tests.hopt_cli.trainables:dies"))

    result = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "2")

    assert result.returncode == 1
    lines = result.stderr.splitlines()
    replaced = [line for line in lines if " in its place (replacement " in line]
    assert len(replaced) == 2 and replaced[1].endswith("(replacement 2 of at most 2)")
    assert all(" died (killed by SIGKILL); its log: " in line for line in replaced)
    assert re.fullmatch(r"hopt: error: worker local-\d+-\d(-r1)? died \(killed by SIGKILL\); its log: \S+\.log; "
                        r"2 dead workers replaced already, so the run stops", lines[-1]), lines[-1]


@pytest.mark.slow  # two worker processes, each importing torch
def test_a_worker_whose_process_a_cuda_error_broke_is_replaced_and_the_run_completes(tmp_path, write_recipe):
    recipe = write_recipe(toy_recipe(population=2, intervals=3, max_failures=2,
                                     worker="tests.hopt_cli.trainables:cuda_error_once"))

    result = hopt("run", str(recipe), "--dir", str(tmp_path / "exp"), "--workers", "1",
                  env={"HOPT_TEST_MARKER": str(tmp_path / "marker")})

    assert result.returncode == 0, result.stderr
    assert re.search(r"worker (local-\d+-0) stopped after a CUDA error broke its process; its log: \S+\.log; "
                     r"starting \1-r1 in its place \(replacement 1 of at most 1\)", result.stderr), result.stderr
    check_finished_experiment(tmp_path / "exp")


def test_a_lone_requeue_task_whose_process_a_cuda_error_broke_requeues_itself(tmp_path, write_recipe):
    """`hopt worker --requeue` as one SLURM array task runs it, with `scontrol` a script that records its
    arguments: the worker stops with POISONED_EXIT and has asked SLURM for a fresh instance of its task."""
    bin_dir, asked = tmp_path / "bin", tmp_path / "scontrol-args"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {asked}\n')
    (bin_dir / "scontrol").chmod(0o755)
    recipe = write_recipe(toy_recipe(population=2, intervals=3, max_failures=2,
                                     worker="tests.hopt_cli.trainables:cuda_error_once"))

    result = hopt("worker", "--dir", str(tmp_path / "exp"), "--recipe", str(recipe), "--requeue",
                  env={"HOPT_TEST_MARKER": str(tmp_path / "marker"), "SLURM_JOB_ID": "101",
                       "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "7",
                       "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})

    assert result.returncode == POISONED_EXIT, result.stderr
    assert asked.read_text() == "requeue 100_7\n"
    assert "requeueing SLURM job 100_7 for a fresh process" in result.stderr


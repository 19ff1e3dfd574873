"""hopt_cli.slurm: environment, sbatch text (golden files), atomic script writes, SLURM errors, signals.

The `slurm` tests submit real jobs to a running cluster (the `cluster` fixture of tests/conftest.py).
"""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hopt_cli.errors import HoptError, SlurmFailed
from hopt_cli.slurm import (SbatchOptions, SlurmEnvironment, render_sbatch, requeue, requeue_if_preempted, submit,
                            write_sbatch)
from hopt_cli.events import Commit
from hopt_cli.store import Store
from tests import commands
from tests.conftest import REPO, toy_recipe
from tests.slurm_cluster import job_states, wait_for, wait_until_finished

GOLDEN = Path(__file__).parent / "golden"

FULL = SbatchOptions(
    directory=Path("/scratch/runs/exp1"), array=8, parallelism=4, partition="gpu", time="04:00:00",
    gres="gpu:1", cpus_per_task=8, mem="32G", grace=300, job_name="digits",
    extra=["--qos=high", "--account=ml"], setup=["module load cuda", "source .venv/bin/activate"],
    command="python -m hopt_cli worker", requeue=True, project=Path("/home/me/my project"),
    python_bin=Path("/home/me/my project/.venv/bin"),
)


@pytest.mark.parametrize("limit", ["30", "30:00", "04:00:00", "2-00", "2-12:00", "1-00:00:00", "UNLIMITED"])
def test_every_time_format_of_sbatch_is_accepted(limit):
    assert f"#SBATCH --time={limit}\n" in render_sbatch(SbatchOptions(Path("/runs/x"), array=2, time=limit))


@pytest.mark.parametrize("limit", ["4h", "1:2:3:4", "-5", "04:00:00 ", "1-"])
def test_a_time_sbatch_would_reject_is_refused_before_the_queue(limit):
    with pytest.raises(HoptError, match="is not a time sbatch reads"):
        SbatchOptions(Path("/runs/x"), array=2, time=limit)


@pytest.mark.parametrize("kwargs", [
    {"mem": "32G"}, {"mem": "32gb"}, {"mem": "1024"}, {"mem": "0"}, {"mem": "500M"}, {"mem": "2T"},
    {"gres": "gpu:1"}, {"gres": "gpu"}, {"gres": "gpu:a100:2"}, {"gres": "gpu:1g.10gb:1,tmpdisk:10G"},
    {"partition": "gpu"}, {"partition": "gpu,cpu"}, {"extra": ["--qos=high", "-A ml"]},
])
def test_every_value_sbatch_reads_is_accepted(kwargs):
    SbatchOptions(Path("/runs/x"), array=2, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"mem": "lots"}, "--mem 'lots' is not a size sbatch reads; write megabytes, or a whole number with the unit"),
    ({"mem": "1.5G"}, "--mem '1.5G' is not a size sbatch reads"),
    ({"mem": "32GiB"}, "--mem '32GiB' is not a size sbatch reads"),
    ({"gres": "gpu 1"}, "--gres 'gpu 1' is not a resource sbatch reads; write name[:type][:count]"),
    ({"gres": "gpu:-1"}, "--gres 'gpu:-1' is not a resource sbatch reads"),
    ({"partition": "gpu cpu"}, "--partition 'gpu cpu' is not a partition name"),
    ({"extra": ["qos=high"]}, "--sbatch 'qos=high' is no sbatch option"),
    ({"workers_per_task": 4, "gres": "gpu:2"}, "--workers-per-task 4 with --gres gpu:2: each task gets 2 GPUs, so "
     "two or more share a GPU; give --workers-per-task 2 (one worker per GPU), or ask for 4 GPUs in --gres"),
    ({"workers_per_task": 2, "gres": "gpu:a100:4,tmpdisk:10G"}, "--workers-per-task 2 with --gres "
     "gpu:a100:4,tmpdisk:10G: each task gets 4 GPUs, so 2 GPUs of each task stay idle; give --workers-per-task 4"),
    ({"workers_per_task": 2, "gres": "gpu:a100"}, "--workers-per-task 2 with --gres gpu:a100: each task gets 1 GPU"),
])
def test_a_value_sbatch_would_reject_is_refused_before_the_queue(kwargs, message):
    with pytest.raises(HoptError) as caught:
        SbatchOptions(Path("/runs/x"), array=2, **kwargs)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def check_golden(name: str, text: str) -> None:
    """Compare with tests/hopt_cli/golden/NAME; HOPT_UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    if os.environ.get("HOPT_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


# render_sbatch


def test_render_default_matches_golden() -> None:
    check_golden("worker_default.sbatch", render_sbatch(SbatchOptions(Path("/scratch/runs/exp1"), array=4)))


def test_render_full_matches_golden() -> None:
    check_golden("worker_full.sbatch", render_sbatch(FULL))


def test_render_of_a_worker_per_gpu_matches_golden() -> None:
    options = SbatchOptions(Path("/scratch/runs/exp1"), array=2, gres="gpu:4", cpus_per_task=16, requeue=True,
                            workers_per_task=4)
    check_golden("worker_per_gpu.sbatch", render_sbatch(options))


def test_render_quotes_paths_and_makes_them_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = render_sbatch(SbatchOptions(Path("my runs/../my exp"), array=1))
    expected = tmp_path / "my exp"
    assert f"exec hopt worker --dir {shlex.quote(str(expected))}\n" in text
    assert f"#SBATCH --output={shlex.quote(str(expected / 'logs/slurm-%A_%a.log'))}\n" in text
    assert "--error" not in text  # stderr joins stdout: one log per worker, named as paths.log() names it
    assert "#SBATCH --job-name=hopt-my_exp\n" in text
    assert "#SBATCH --array=0-0\n" in text


@pytest.mark.parametrize("kwargs", [
    {"array": 0}, {"array": 2, "parallelism": 0}, {"array": 2, "grace": 70000},
    {"array": 2, "cpus_per_task": 0}, {"array": 2, "workers_per_task": 0},
    {"array": 2, "extra": ["--qos=a\necho injected"]}, {"array": 2, "setup": ["a\rb"]},
])
def test_options_reject_bad_values(kwargs: dict) -> None:
    with pytest.raises(HoptError):
        SbatchOptions(Path("/x"), **kwargs)


# SlurmEnvironment


def test_env_of_an_array_task() -> None:
    env = SlurmEnvironment.from_env({"SLURM_JOB_ID": "1007", "SLURM_ARRAY_JOB_ID": "1000",
                                     "SLURM_ARRAY_TASK_ID": "7", "SLURM_RESTART_COUNT": "2",
                                     "SLURMD_NODENAME": "gpu-03"})
    assert env == SlurmEnvironment("1007", "1000", "7", 2, "gpu-03")
    assert env.requeue_target == "1000_7"
    assert env.worker_name == "slurm-1000_7"


def test_env_of_a_plain_job_first_run() -> None:
    env = SlurmEnvironment.from_env({"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": ""})
    assert env.restart_count == 0
    assert env.requeue_target == "42"
    assert env.worker_name == "slurm-42"


def test_env_outside_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                     "SLURMD_NODENAME"):
        monkeypatch.delenv(variable, raising=False)
    env = SlurmEnvironment.from_env()
    assert env == SlurmEnvironment()
    assert env.worker_name is None and env.requeue_target is None
    with pytest.raises(HoptError, match="--requeue needs a SLURM job"):
        requeue(env)


def test_only_a_preemption_with_work_left_asks_for_a_requeue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    env = SlurmEnvironment.from_env()
    requeue_if_preempted(env, preempted=False, complete=False)  # nothing to ask: no job needed
    requeue_if_preempted(env, preempted=True, complete=True)
    with pytest.raises(HoptError, match="--requeue needs a SLURM job"):  # it would ask: here there is no job
        requeue_if_preempted(env, preempted=True, complete=False)


# write_sbatch


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700), (0o027, 0o750), (0o002, 0o775)])
def test_write_sbatch_is_executable_within_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = write_sbatch(SbatchOptions(tmp_path / "exp", array=2))
    finally:
        os.umask(old)
    assert path == tmp_path / "exp" / "slurm" / "worker.sbatch"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert (tmp_path / "exp" / "logs").is_dir()


def test_write_sbatch_replaces_atomically(tmp_path: Path) -> None:
    first = write_sbatch(SbatchOptions(tmp_path, array=2))
    inode = first.stat().st_ino
    second = write_sbatch(SbatchOptions(tmp_path, array=3))
    assert second == first and second.stat().st_ino != inode  # a new file renamed over, not rewritten
    assert second.read_text() == render_sbatch(SbatchOptions(tmp_path, array=3))
    assert sorted(p.name for p in second.parent.iterdir()) == ["worker.sbatch"]  # no temp files left


def test_write_sbatch_unwritable_dir_is_a_hopt_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(HoptError, match="cannot write .*choose a --dir"):
        write_sbatch(SbatchOptions(tmp_path / "file", array=1))


# submit and requeue errors


def test_submit_without_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no sbatch anywhere
    with pytest.raises(SlurmFailed, match=r"^sbatch not found on PATH.*yourself: sbatch /x/w\.sbatch$"):
        submit(Path("/x/w.sbatch"))


def test_requeue_without_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmFailed, match=r"^scontrol not found on PATH.*JobRequeue=1"):
        requeue(SlurmEnvironment(job_id="7", array_job_id="5", array_task_id="2"))


def fake_command(folder: Path, name: str) -> None:
    """A stand-in SLURM command that fails the way SLURM does: messages on stderr, exit 1."""
    path = folder / name
    path.write_text("#!/bin/sh\necho \"$0 $*\" >&2\n"
                    "echo 'sbatch: error: Batch job submission failed: Invalid partition' >&2\n"
                    "exit 1\n")
    path.chmod(0o755)


def test_submit_reports_sbatch_stderr_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_command(tmp_path, "sbatch")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmFailed) as caught:
        submit(Path("/x/w.sbatch"))
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"sbatch --parsable /x/w.sbatch failed (exit 1): "
                       f"{tmp_path}/sbatch --parsable /x/w.sbatch; "
                       "sbatch: error: Batch job submission failed: Invalid partition; "
                       "check the #SBATCH lines of /x/w.sbatch, or submit it yourself: sbatch /x/w.sbatch")


def test_requeue_reports_scontrol_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_command(tmp_path, "scontrol")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmFailed, match=r"^scontrol requeue 5_2 failed \(exit 1\): .*scontrol requeue 5_2; "):
        requeue(SlurmEnvironment(job_id="7", array_job_id="5", array_task_id="2"))


# a real cluster


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
def test_array_runs_on_a_real_cluster(tmp_path: Path) -> None:
    options = SbatchOptions(tmp_path / "exp", array=3, time="00:05:00", command="echo ran")
    job_id = submit(write_sbatch(options))
    try:
        assert job_id.isdigit()
        wait_until_finished(job_id, timeout=120)
        assert set(job_states(job_id)) <= {"COMPLETED"}
        for task in range(3):
            out = options.paths.log(f"slurm-{job_id}_{task}")
            assert out.read_text() == f"ran --dir {options.directory}\n"
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=15)


WORKER_STAND_IN = """
import pathlib, sys, time
from hopt_cli.signals import StopSignals
from hopt_cli.slurm import SlurmEnvironment, requeue
env = SlurmEnvironment.from_env()
stops = StopSignals().install()
print(f"run {env.restart_count} as {env.worker_name}", flush=True)
if env.restart_count > 0:
    sys.exit(0)
pathlib.Path(sys.argv[-1], "ready").touch()
while not stops.requested:
    time.sleep(0.1)
print(f"got {stops.signal_name}", flush=True)
stops.restore()
requeue(env)
time.sleep(60)  # SLURM ends this instance with SIGTERM once the requeue takes effect
"""


@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
def test_preemption_signal_reaches_python_which_requeues_itself(tmp_path: Path) -> None:
    program = tmp_path / "worker.py"
    program.write_text(WORKER_STAND_IN)
    options = SbatchOptions(tmp_path / "exp", array=1, time="00:05:00",
                            setup=[f"export PYTHONPATH={shlex.quote(str(REPO))}"],
                            command=f"{shlex.quote(sys.executable)} {shlex.quote(str(program))}")
    job_id = submit(write_sbatch(options))
    task = f"{job_id}_0"
    try:
        wait_for((options.directory / "ready").exists, 120, "the first run to start")
        # What --signal=B:USR1@grace does near the time limit, now: signal the batch shell, i.e. the worker.
        subprocess.run(["scancel", "--batch", "--signal=USR1", task], check=True, timeout=15)
        log = options.paths.log(f"slurm-{task}")
        wait_for(lambda: "run 1 as" in log.read_text(), 240, "the requeued run")
        wait_until_finished(job_id, timeout=60)
        lines = log.read_text().splitlines()
        assert lines[:2] == [f"run 0 as slurm-{task}", "got SIGUSR1"] and lines[-1] == f"run 1 as slurm-{task}"
        assert "DUE TO JOB REQUEUE" in lines[2]  # slurmstepd's stderr: the log holds both streams
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=15)


REPORTS = ("python -c 'import json, os, sys; json.dump(dict(score=1, python=sys.executable, "
           "threads=os.environ.get(\"OMP_NUM_THREADS\")), open(sys.argv[1] + \"/metrics.json\", \"w\"))' "
           "{out} {parent} {h0}")


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.usefixtures("cluster")
def test_a_command_trainable_in_a_task_runs_hopts_python_with_the_tasks_cores(tmp_path: Path, write_recipe) -> None:
    """sbatch hands the task the submitting shell's PATH, here one without any `python`; the task has 2 cores."""
    root = tmp_path / "exp"
    recipe = write_recipe(toy_recipe(population=2, intervals=2, worker=None, command=REPORTS,
                                     space={"h0": {"type": "float", "low": 0.0, "high": 1.0}}))
    no_python = {"PATH": "/usr/bin:/bin"}
    assert commands.hopt("init", str(recipe), "--dir", str(root), env=no_python).returncode == 0

    submitted = commands.hopt("slurm", "--dir", str(root), "--array", "1", "--cpus-per-task", "2", "--time",
                              "00:05:00", "--submit", env=no_python)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    try:
        wait_until_finished(job, timeout=120)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=15)

    store = Store.open(root)
    log = store.paths.log(f"slurm-{job}_0").read_text()
    commits = [e for e in store.read_events()[0] if isinstance(e, Commit)]
    assert len(commits) == 4, log
    assert {(e.metrics["python"], e.metrics["threads"]) for e in commits} == {(sys.executable, "2")}


# `hopt slurm`


@pytest.fixture
def experiment(tmp_path: Path, write_recipe) -> Path:
    root = tmp_path / "exp"
    assert commands.invoke("init", str(write_recipe(toy_recipe())), "--dir", str(root)).exit_code == 0
    return root


def test_hopt_slurm_writes_the_script(experiment: Path) -> None:
    result = commands.invoke("slurm", "--dir", str(experiment), "--array", "3", "--parallel", "2", "--time",
                             "1:00:00", "--sbatch=--qos=low", "--setup", "module load cuda", "--command",
                             "python -m hopt_cli worker")

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    expected = SbatchOptions(experiment, 3, parallelism=2, time="1:00:00", extra=["--qos=low"],
                             setup=["module load cuda"], command="python -m hopt_cli worker", requeue=True,
                             project=REPO, python_bin=Path(sys.executable).parent)
    assert (experiment / "slurm" / "worker.sbatch").read_text() == render_sbatch(expected)
    assert f"logs go to {experiment}/logs/slurm-%A_%a.log" in result.stderr


def test_the_script_runs_this_hopt_in_the_project_directory(experiment: Path) -> None:
    """A task's PATH and working directory are not the submitting shell's: the script names both."""
    assert commands.invoke("slurm", "--dir", str(experiment), "--array", "1").exit_code == 0

    text = (experiment / "slurm" / "worker.sbatch").read_text()
    assert f"#SBATCH --chdir={REPO}\n" in text
    assert f"\nexport PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"\n" in text
    assert f"\nexec {shlex.quote(sys.executable)} -m hopt_cli worker --dir {experiment} --requeue\n" in text


def test_hopt_slurm_warns_of_a_hopt_in_a_folder_other_nodes_lack(experiment: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", "/tmp/venv/bin/python")

    result = commands.invoke("slurm", "--dir", str(experiment), "--array", "1")

    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: this hopt runs from /tmp/venv/bin/python, under /tmp, which is local "
                                    "to this node: tasks on other nodes will not find it; install hopt where")
    text = (experiment / "slurm" / "worker.sbatch").read_text()
    assert '\nexport PATH=/tmp/venv/bin:"$PATH"\n' in text and "\nexec /tmp/venv/bin/python -m hopt_cli" in text
    assert "warning" not in commands.invoke("slurm", "--dir", str(experiment), "--array", "1", "--command",
                                            "/shared/venv/bin/hopt worker").stderr


def test_hopt_slurm_refuses_a_memory_size_sbatch_would_reject(experiment: Path) -> None:
    result = commands.invoke("slurm", "--dir", str(experiment), "--array", "2", "--mem", "lots")

    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("hopt: error: --mem 'lots' is not a size sbatch reads")
    assert not (experiment / "slurm").exists()


def test_hopt_slurm_refuses_more_or_fewer_workers_per_task_than_gpus(experiment: Path) -> None:
    result = commands.invoke("slurm", "--dir", str(experiment), "--array", "2", "--workers-per-task", "4",
                             "--gres", "gpu:2")

    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("hopt: error: --workers-per-task 4 with --gres gpu:2: each task gets 2 GPUs")
    assert not (experiment / "slurm").exists()


def test_hopt_slurm_submit_prints_the_job_id(experiment: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '4242;hopt'\n")
    fake.chmod(0o755)

    result = commands.hopt("slurm", "--dir", str(experiment), "--array", "2", "--submit",
                           env={"PATH": f"{fake.parent}:/usr/bin:/bin"})

    assert result.returncode == 0, result.stderr
    assert result.stdout == "4242\n"


def test_hopt_slurm_shows_what_sbatch_said_and_exits_1(experiment: Path, tmp_path: Path) -> None:
    fake_command(tmp_path, "sbatch")

    result = commands.hopt("slurm", "--dir", str(experiment), "--array", "2", "--partition", "nope", "--submit",
                           env={"PATH": f"{tmp_path}:/usr/bin:/bin"})

    assert result.returncode == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith("hopt: error: sbatch --parsable ") and "Invalid partition" in error
    assert "Traceback" not in result.stderr

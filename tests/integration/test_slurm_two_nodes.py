"""The whole promise on two SLURM nodes over a network filesystem (tests/slurm2/start-cluster.sh): `hopt init`
in the shared directory, `hopt slurm --array 6 --submit` as a user types it, tasks on both nodes; during the
run a task cancelled, one preempted (it requeues itself), a worker killed with SIGKILL on each node and one
node's slurmd stopped and started again; the experiment completes with every invariant. And
`srun -N2 hopt doctor --peer` across the two nodes."""
from __future__ import annotations

import errno
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hopt_cli.store import Store
from tests.conftest import REPO, toy_recipe
from tests.guards import Stall
from tests.invariants import check_finished_experiment
from tests.slurm2_cluster import NODES, SHARED, env, in_node, slurm, start_cluster, stop_slurmd
from tests.slurm_cluster import FINAL_STATES

pytestmark = [pytest.mark.slow, pytest.mark.two_nodes, pytest.mark.usefixtures("two_nodes")]

PATIENCE = 120.0  # no committed interval for this long fails the run (a killed member waits out its 10 s lease)
# A user's command trainable: a script run by `python` from PATH, writing its metric where hopt asks.
SCRIPT = '''\
import json, os, pathlib, sys, time
out, h0, h1 = pathlib.Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
parent = pathlib.Path(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else None
time.sleep(float(os.environ["HOPT_TEST_SLEEP"]))
score = (float((parent / "state").read_text()) if parent else 0.0) + 1 - (h0 - 0.5) ** 2 - (h1 - 0.5) ** 2
(out / "state").write_text(repr(score))
(out / "metrics.json").write_text(json.dumps({"score": score}))
'''


@pytest.fixture
def shared(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh folder on the shared filesystem the test is parametrized with, seen at one path everywhere."""
    kind = request.param
    folder = SHARED[kind] / "hopt2-tests" / f"{kind}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], timeout=120)


def user_env() -> dict[str, str]:
    """A user's shell on the submit host: this Python's bin first on PATH (an activated venv)."""
    return env(PATH=f"{Path(sys.executable).parent}:{env()['PATH']}", HOPT_TEST_SLEEP="0.6")


def hopt(*argv: str, cwd: Path, environ: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hopt_cli", *argv], capture_output=True, text=True, cwd=cwd,
                          env=environ, timeout=300)


def tasks_where(job: str) -> dict[str, str]:
    """Running task id -> node, from squeue."""
    shown = slurm("squeue", "-h", "-j", job, "-t", "RUNNING", "-o", "%i %N")
    return dict(line.split() for line in shown.stdout.splitlines() if len(line.split()) == 2)


def wait(condition, store: Store, what: str, guard: Stall) -> None:
    """Poll `condition` while the experiment makes progress."""
    while not condition():
        guard.check(sum(m.interval for m in store.sync().members), what)
        time.sleep(0.2)


def training(store: Store, worker: str) -> bool:
    """Whether `worker` has claimed an interval (from the journal: sshfs may cache the leases' listing 20 s)."""
    return any(e["type"] == "claim" and e["worker"] == worker for e in store.journal.read()[0])


def job_finished(job: str) -> bool:
    shown = slurm("scontrol", "-o", "show", "job", job)
    states = re.findall(r"\bJobState=(\S+)", shown.stdout)
    return shown.returncode != 0 or all(state in FINAL_STATES for state in states)


@pytest.mark.parametrize("trainable", ["python", "command"])
@pytest.mark.parametrize("shared", ["glusterfs", "sshfs"], indirect=True)
def test_a_worker_array_on_two_nodes_survives_cancel_preemption_kills_and_a_slurmd_restart(shared, trainable):
    project = shared / "project"
    project.mkdir()
    root = shared / "exp"
    recipe = toy_recipe(population=6, intervals=16, lease={"timeout": 10, "heartbeat": 2},
                        worker="tests.hopt_cli.trainables:sleepy_quadratic")
    if trainable == "command":
        (project / "mytrain.py").write_text(SCRIPT)
        recipe.pop("worker")
        recipe["command"] = "python mytrain.py {out} {h0} {h1} {parent}"
    if shared.parent.parent == SHARED["sshfs"]:
        recipe["lock"] = "hardlink"
    (project / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    cwd = project if trainable == "command" else REPO
    environ = user_env()
    started = time.monotonic()
    assert hopt("init", str(project / "recipe.yaml"), "--dir", str(root), cwd=cwd, environ=environ).returncode == 0
    submitted = hopt("slurm", "--dir", str(root), "--array", "6", "--time", "00:10:00", "--grace", "60", "--submit",
                     cwd=cwd, environ=environ)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    store = Store.open(root)
    guard = Stall(PATIENCE)
    seen: dict[str, float] = {}
    try:
        wait(lambda: len(tasks_where(job)) == 6, store, "six tasks running", guard)
        where = tasks_where(job)
        assert set(where.values()) == set(NODES), where
        seen["six running"] = time.monotonic() - started
        wait(lambda: training(store, f"slurm-{job}_0"), store, "task 0 to train", guard)
        assert slurm("scancel", f"{job}_0").returncode == 0  # the operator cancels: the worker releases, exits
        wait(lambda: training(store, f"slurm-{job}_1"), store, "task 1 to train", guard)
        assert slurm("scancel", "--batch", "--signal=USR1", f"{job}_1").returncode == 0  # preemption: requeues
        for node in NODES:  # a worker killed with SIGKILL on each node: its member waits out its lease
            victim = next(task for task, host in where.items() if host == node and task not in (f"{job}_0", f"{job}_1"))
            wait(lambda: training(store, f"slurm-{victim}"), store, f"task {victim} to train", guard)
            pids = in_node(node, "pgrep", "-f", "hopt_cli worker").stdout.split()
            killed = in_node(node, "sh", "-c", f"for p in {' '.join(pids)}; do tr '\\0' '\\n' </proc/$p/environ "
                             f"| grep -qx SLURM_ARRAY_TASK_ID={victim.split('_')[1]} && kill -9 $p && echo $p; done")
            assert killed.stdout.strip(), (victim, killed.stderr)
        seen["acted"] = time.monotonic() - started
        stop_slurmd("n2")
        start_cluster()  # starts n2's slurmd again
        seen["slurmd n2 back"] = time.monotonic() - started
        wait(lambda: store.sync().complete, store, "the experiment to complete", guard)
        seen["complete"] = time.monotonic() - started
        wait(lambda: job_finished(job), store, "the array to finish", guard)
        seen["array finished"] = time.monotonic() - started
    finally:
        slurm("scancel", job)
    summary = check_finished_experiment(root)
    print(f"\ntwo nodes ({shared.parent.parent.name}, {trainable}): " + ", ".join(f"{k} at {v:.1f} s" for k, v in
          seen.items()) + f"; {summary}")
    claims = [e for e in store.journal.read()[0] if e["type"] == "claim"]
    assert {e["host"] for e in claims} == set(NODES)
    assert summary.reclaims >= 1 and summary.failures == 0  # a kill between two intervals leaves no lease
    logs = "".join(path.read_text() for path in (root / "logs").rglob("*") if path.is_file())
    assert "Traceback" not in logs
    assert "stopped by SIGTERM" in logs and "stopped by SIGUSR1" in logs
    preempted = store.paths.log(f"slurm-{job}_1").read_text()  # it requeued itself, came back and ended
    assert f"preempted with work left: requeueing SLURM job {job}_1" in preempted
    assert preempted.rstrip().splitlines()[-1].endswith(" committed, 0 failed, 0 discarded"), preempted

    best = hopt("best", "--dir", str(root), "--out", str(shared / "best"), cwd=cwd, environ=environ)
    assert best.returncode == 0, best.stderr
    replay = hopt("replay", str(shared / "best" / "schedule.yaml"), "--dir", str(shared / "replay"), cwd=cwd,
                  environ=environ)
    assert replay.returncode == 0, replay.stderr
    assert "(identical)" in replay.stdout.splitlines()[0], replay.stdout


@pytest.mark.parametrize(("kind", "verdict"), [("glusterfs", "use lock: flock"), ("sshfs", "use lock: hardlink")])
def test_doctor_peer_under_srun_names_the_lock_kind_on_both_nodes(kind, verdict):
    folder = SHARED[kind] / "hopt2-tests" / f"doctor-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        done = subprocess.run(["srun", "-N2", "-l", sys.executable, "-m", "hopt_cli", "doctor", "--peer", "--dir",
                               str(folder)], capture_output=True, text=True, env=env(), timeout=180, cwd=REPO)
    finally:
        subprocess.run(["rm", "-rf", str(folder)], timeout=60)
    print(done.stdout)
    for task in ("0", "1"):
        lines = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith(f"{task}: ")]
        assert f"{verdict} " in "\n".join(lines) + " ", lines
    assert re.search(r"peer: n[12] \(.*\) met n[12]", done.stdout)
    if kind == "glusterfs":
        assert done.returncode == 0, done.stderr
    else:  # sshfs: flock does not exclude across the nodes, which doctor reports as a failed check
        assert "FAIL  lock exclusion across nodes (flock)" in done.stdout and done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr


def _submit_host_daemons(mountpoint: Path) -> list[int]:
    """The pids of the FUSE daemons of `mountpoint` in this mount namespace (the nodes run their own): the one
    serving it, and any whose mount was lazily unmounted while busy and still lives on."""
    ours = os.readlink("/proc/self/ns/mnt")
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if str(mountpoint).encode() in argv and os.readlink(proc / "ns" / "mnt") == ours:
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    assert found, f"no FUSE daemon serves {mountpoint} here"
    return found


def test_the_start_script_replaces_the_submit_hosts_dead_mounts():
    # A machine stopped with the cluster up keeps FUSE mounts whose daemons are gone: every stat of them fails
    # with ENOTCONN, even `mkdir -p`. Starting the cluster again must clear and remount them.
    for path in SHARED.values():
        for pid in _submit_host_daemons(path):
            daemon = os.pidfd_open(pid)
            signal.pidfd_send_signal(daemon, signal.SIGKILL)
            assert select.select([daemon], [], [], 30)[0], f"the FUSE daemon {pid} of {path} did not exit"
            os.close(daemon)
        with pytest.raises(OSError) as dead:
            os.stat(path)
        assert dead.value.errno == errno.ENOTCONN
    start_cluster()
    for kind, path in SHARED.items():
        probe = path / f"probe-{uuid.uuid4().hex[:8]}"
        probe.write_text(kind)
        seen = in_node("n2", "cat", str(probe))
        probe.unlink()
        assert seen.stdout == kind, seen.stderr

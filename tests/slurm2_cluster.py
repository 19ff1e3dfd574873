"""Helpers for the tests on the two-node SLURM cluster of tests/slurm2/start-cluster.sh (cluster `hopt2`).

Nodes n1 and n2 are two slurmd, each in its own UTS + PID + mount namespace, each mounting the shared
directories itself at the same paths as this machine (the submit host): GlusterFS at /mnt/hopt2-gluster,
sshfs at /mnt/hopt2-sshfs. Clients reach the cluster with SLURM_CONF=/etc/slurm-hopt2/slurm.conf (`env()`).

The tests marked `two_nodes` use the `two_nodes` fixture: it skips when the cluster does not answer with
both nodes up, and fails instead under CI=true.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

START_SCRIPT = "tests/slurm2/start-cluster.sh"
SLURM_CONF = "/etc/slurm-hopt2/slurm.conf"
RUN = Path("/run/slurm-hopt2")
NODES = ("n1", "n2")
SHARED = {"glusterfs": Path("/mnt/hopt2-gluster"), "sshfs": Path("/mnt/hopt2-sshfs")}
FSTYPES = {"glusterfs": "fuse.glusterfs", "sshfs": "fuse.sshfs"}


def env(**extra: str) -> dict[str, str]:
    """This process's environment with the two-node cluster's SLURM_CONF (and `extra`)."""
    return {**os.environ, "SLURM_CONF": SLURM_CONF, **extra}


def slurm(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """A SLURM client command run against the two-node cluster."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env())


def _fstype(mountpoint: Path) -> str | None:
    types = [line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()
             if line.split()[1] == str(mountpoint)]
    return types[-1] if types else None


def cluster2_problem() -> str | None:
    """Why the two-node cluster is not usable here (None when it is)."""
    try:
        nodes = slurm("sinfo", "-h", "-N", "-o", "%N %t", timeout=15)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        return f"the two-node SLURM cluster does not answer sinfo ({err})"
    if nodes.returncode != 0:
        return f"the two-node SLURM cluster does not answer sinfo ({nodes.stderr.strip() or 'no answer'})"
    states = dict(line.split() for line in nodes.stdout.splitlines() if line.strip())
    down = [f"{node} {states.get(node, 'missing')}" for node in NODES
            if not re.match(r"(idle|mix|alloc)", states.get(node, ""))]
    if down:
        return f"the two-node SLURM cluster's nodes are not up ({', '.join(down)})"
    wrong = [f"{path} is not {FSTYPES[kind]}" for kind, path in SHARED.items() if _fstype(path) != FSTYPES[kind]]
    return f"the two-node cluster's shared mounts are missing ({'; '.join(wrong)})" if wrong else None


@pytest.fixture(scope="session")
def two_nodes() -> None:
    """Skip unless the two-node cluster answers with both nodes up; with CI=true, fail instead."""
    problem = cluster2_problem()
    if problem is not None:
        message = f"{problem}; run {START_SCRIPT} as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def node_init(node: str) -> int:
    """The pid (here) of a node's init: the child of its `unshare`."""
    unshare = int((RUN / f"node-{node}.pid").read_text())
    return int(Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()[0])


def in_node(node: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `argv` inside a node (its hostname, its pids, its mounts), as a shell on that machine would."""
    return subprocess.run(["nsenter", "-t", str(node_init(node)), "-u", "-p", "-m", "--", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env())


def stop_slurmd(node: str) -> None:
    """Stop a node's slurmd (SIGTERM, as `systemctl stop slurmd` does) and wait until it is gone; its running
    jobs go on."""
    done = in_node(node, "sh", "-c", f'pid=$(cat {RUN}/slurmd-{node}.pid) && kill "$pid" && '
                                     'while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done')
    assert done.returncode == 0, done.stderr


def start_cluster() -> None:
    """Run start-cluster.sh, which starts what of the cluster is not running (a stopped slurmd, a dead mount)
    and waits for both nodes."""
    done = subprocess.run(["bash", START_SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr

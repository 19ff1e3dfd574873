"""The netfs harness itself: its mounts are real, distinct mounts of one filesystem, and node_popen makes nodes.

Needs tests/netfs/start-netfs.sh (skipped without it; a failure with CI=true). About 5 s.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.netfs_cluster import (MOUNTS, SharedDir, for_each_netfs, node_kill, node_pids, node_popen, node_signal,
                                 wait_until)

pytestmark = [pytest.mark.netfs, pytest.mark.usefixtures("netfs")]


def _proc_gone(pid: int) -> bool:
    """No such process, or only its zombie (this sandbox's pid 1 may never reap what is reparented to it)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except (FileNotFoundError, ProcessLookupError):
        return True


@for_each_netfs
def test_a_file_written_through_a_is_read_through_b(shared_dir: SharedDir) -> None:
    assert shared_dir.a != shared_dir.b and os.stat(shared_dir.a).st_dev != os.stat(shared_dir.b).st_dev
    assert list(shared_dir.b.iterdir()) == []
    (shared_dir.a / "hello.txt").write_text("hello from a\n")
    wait_until(lambda: (shared_dir.b / "hello.txt").read_text() == "hello from a\n", 30,
               f"hello.txt to be read through {shared_dir.b}")
    (shared_dir.b / "reply.txt").write_text("reply from b\n")
    wait_until(lambda: (shared_dir.a / "reply.txt").read_text() == "reply from b\n", 30,
               f"reply.txt to be read through {shared_dir.a}")


@for_each_netfs
def test_os_replace_through_a_becomes_visible_through_b(shared_dir: SharedDir) -> None:
    (shared_dir.a / "state.json").write_text('{"v": 0}')
    wait_until(lambda: (shared_dir.b / "state.json").read_text() == '{"v": 0}', 30, "state v0 through b")
    for version in (1, 2):
        tmp = shared_dir.a / f"state.json.tmp{version}"
        tmp.write_text(f'{{"v": {version}}}')
        os.replace(tmp, shared_dir.a / "state.json")
        wait_until(lambda: (shared_dir.b / "state.json").read_text() == f'{{"v": {version}}}', 30,
                   f"state v{version} through {shared_dir.b}")
    wait_until(lambda: sorted(p.name for p in shared_dir.b.iterdir()) == ["state.json"], 30,
               f"only state.json listed through {shared_dir.b}")


@for_each_netfs
def test_flock_is_shared_between_the_mounts_on_glusterfs_only(shared_dir: SharedDir) -> None:
    """What tests/netfs/README.md reports: GlusterFS locks on the brick, sshfs only in each client's kernel."""
    (shared_dir.a / "lock").write_text("")
    wait_until(lambda: (shared_dir.b / "lock").exists(), 30, "the lock file through b")
    with open(shared_dir.a / "lock", "r+") as held, open(shared_dir.b / "lock", "r+") as other:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            excluded = False
        except BlockingIOError:
            excluded = True
    assert excluded == (shared_dir.kind == "glusterfs")


_REPORT = textwrap.dedent("""
    import json, os, socket
    print(json.dumps({"hostname": socket.gethostname(), "pid": os.getpid(),
                      "pidns": os.readlink("/proc/self/ns/pid"), "utsns": os.readlink("/proc/self/ns/uts"),
                      "mounts": open("/proc/mounts").read()}))
""")


def test_a_node_has_its_own_hostname_and_pid_namespace() -> None:
    answer = node_popen("node-7", [sys.executable, "-c", _REPORT], stdout=subprocess.PIPE, text=True)
    out, _ = answer.communicate(timeout=30)
    assert answer.returncode == 0
    inside = json.loads(out)
    assert inside["hostname"] == "node-7" != socket.gethostname()
    assert inside["pid"] == 2  # pid 1 is the node's init
    assert inside["pidns"] != os.readlink("/proc/self/ns/pid")
    assert inside["utsns"] != os.readlink("/proc/self/ns/uts")
    for mounts in MOUNTS.values():  # the netfs mounts are there inside too
        assert f" {mounts.a} " in inside["mounts"] and f" {mounts.b} " in inside["mounts"]


def test_a_node_reads_what_another_node_wrote(tmp_path: Path, make_shared_dir) -> None:
    shared = make_shared_dir("sshfs-nocache")
    write = node_popen("writer", ["sh", "-c", f'hostname > "{shared.a}/who"'])
    assert write.wait(timeout=30) == 0
    read = node_popen("reader", ["sh", "-c", f'echo "$(hostname) read $(cat "{shared.b}/who")"'],
                      stdout=subprocess.PIPE, text=True)
    assert read.communicate(timeout=30)[0] == "reader read writer\n"


def test_node_signal_reaches_the_command_and_node_kill_ends_everything(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import pathlib, signal, subprocess, sys, time
        child = subprocess.Popen(["sleep", "300"])
        def on_term(sig, frame):
            pathlib.Path("{tmp_path}/got-term").write_text(str(sig))
        signal.signal(signal.SIGTERM, on_term)
        pathlib.Path("{ready}").write_text(str(child.pid))
        while True:
            time.sleep(0.05)
    """)
    node = node_popen("node-k", [sys.executable, "-c", script])
    try:
        wait_until(ready.exists, 30, "the node's command to start")
        init, main = node_pids(node)
        assert ready.read_text() == "3"  # sleep is pid 3 inside the node
        (sleep_pid,) = [int(p) for p in open(f"/proc/{main}/task/{main}/children").read().split()]
        node_signal(node, signal.SIGTERM)
        wait_until(lambda: (tmp_path / "got-term").read_text() == str(int(signal.SIGTERM)), 10,
                   "the command's SIGTERM handler to run")
        assert node.poll() is None
        assert node_kill(node) == -signal.SIGKILL
        for pid in (init, main, sleep_pid):
            wait_until(lambda: _proc_gone(pid), 10, f"pid {pid} of the killed node to be gone")
    finally:
        node_kill(node)


def test_a_node_ends_with_its_command_and_reports_a_signal_as_128_plus_n() -> None:
    node = node_popen("node-t", ["sleep", "300"])
    try:
        node_pids(node)
        node_signal(node, signal.SIGTERM)
        assert node.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        node_kill(node)
    assert node_popen("node-x", ["sh", "-c", "exit 7"]).wait(timeout=30) == 7

"""`hopt doctor` on real network filesystems: the truth about sshfs and GlusterFS, alone and across two nodes.

`--peer` runs as two "nodes" (tests/netfs_cluster.node_popen: own hostname and PID namespace), one seeing
the directory through mount a and one through mount b, as two machines would: on sshfs flock does not
exclude across them and the doctor says to use the hard-link lock; on GlusterFS flock excludes and is the
one to use. Plain `hopt doctor` on sshfs names the filesystem and fails flock in seconds instead of a false
PASS. Needs tests/netfs/start-netfs.sh. About 35 s in all, most of it sshfs's 20 s listing cache.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.commands import hopt
from tests.conftest import REPO
from tests.netfs_cluster import MOUNTS, SharedDir, node_kill, node_popen

pytestmark = [pytest.mark.slow, pytest.mark.netfs, pytest.mark.usefixtures("netfs")]

NODES = ("node-a", "node-b")
TOGETHER = ("lock exclusion across nodes", "append seen after", "readdir freshness", "freshness after a replace",
            "use lock:")  # the lines both peers print for what they tested together


def doctor_on_two_nodes(shared: SharedDir) -> list[tuple[int, list[str]]]:
    """(exit status, stdout lines) of `hopt doctor --peer`, started at once on node-a (through mount a) and
    node-b (through mount b)."""
    peers = [node_popen(node, [sys.executable, "-m", "hopt_cli", "doctor", "--peer", "--dir", str(root)], cwd=REPO,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node, root in zip(NODES, (shared.a, shared.b))]
    try:
        outputs = [peer.communicate(timeout=120) for peer in peers]
    finally:
        for peer in peers:
            node_kill(peer)
    results = [(peer.returncode, out.splitlines()) for peer, (out, _) in zip(peers, outputs)]
    for (code, lines), (_, errors) in zip(results, outputs):
        print(f"exit {code}:", *lines, errors, sep="\n")
    return results


def line(lines: list[str], start: str) -> str:
    found = [each for each in lines if each.startswith(start)]
    assert len(found) == 1, f"one line starting {start!r} expected in:\n" + "\n".join(lines)
    return found[0]


def together(lines: list[str]) -> list[str]:
    return [each for each in lines if any(part in each for part in TOGETHER)]


def hopt_doctor(root: Path, *args: str) -> subprocess.CompletedProcess:
    return hopt("doctor", "--dir", str(root), *args)


@pytest.mark.parametrize("shared_dir", ["sshfs"], indirect=True)
def test_across_two_sshfs_nodes_flock_fails_and_the_hard_link_lock_is_recommended(shared_dir):
    results = doctor_on_two_nodes(shared_dir)

    for (code, lines), me, other in zip(results, NODES, reversed(NODES)):
        assert code == 1
        peer = line(lines, "PASS  peer: ")
        assert peer.startswith(f"PASS  peer: {me} (") and f"met {other} (" in peer
        flock = line(lines, "FAIL  lock exclusion across nodes (flock): ")
        assert "took it while" in flock and "use `lock: hardlink`" in flock
        assert [each for each in lines if each.startswith("FAIL")] == [flock]  # everything else passes
        line(lines, "PASS  lock exclusion across nodes (hardlink): ")
        line(lines, "PASS  append seen after the lock changed hands (hardlink): ")
        line(lines, "PASS  readdir freshness: ")
        line(lines, "PASS  freshness after a replace: ")
        assert lines[-1].startswith("use lock: hardlink")
    assert together(results[0][1]) == together(results[1][1])
    assert list((MOUNTS["sshfs-nocache"].a / shared_dir.name).iterdir()) == []  # session and scratch folders gone


@pytest.mark.parametrize("shared_dir", ["glusterfs"], indirect=True)
def test_across_two_glusterfs_nodes_flock_excludes_and_is_recommended(shared_dir):
    results = doctor_on_two_nodes(shared_dir)

    for code, lines in results:
        assert code == 0
        assert not [each for each in lines if each.startswith("FAIL")]
        line(lines, "PASS  lock exclusion across nodes (flock): ")
        line(lines, "PASS  lock exclusion across nodes (hardlink): ")
        line(lines, "PASS  append seen after the lock changed hands (flock): ")
        assert lines[-1].startswith("use lock: flock")
    assert together(results[0][1]) == together(results[1][1])


@pytest.mark.parametrize("shared_dir", ["sshfs"], indirect=True)
def test_plain_doctor_on_sshfs_names_it_and_fails_flock_instead_of_a_false_pass(shared_dir):
    flock = hopt_doctor(shared_dir.a)

    assert flock.returncode == 1, flock.stdout + flock.stderr
    lines = flock.stdout.splitlines()
    filesystem = line(lines, "FAIL  filesystem: ")
    assert filesystem.startswith(f"FAIL  filesystem: fuse.sshfs at {MOUNTS['sshfs'].a} (")
    assert "use `lock: hardlink`" in filesystem
    assert "hopt refuses it here" in line(lines, "FAIL  lock exclusion (flock, two processes on this host): ")
    assert "st_nlink reads 1" in line(lines, "PASS  hard links: ")

    started = time.monotonic()
    hardlink = hopt_doctor(shared_dir.a, "--lock", "hardlink")

    assert time.monotonic() - started < 20
    assert hardlink.returncode == 0, hardlink.stdout + hardlink.stderr
    lines = hardlink.stdout.splitlines()
    assert "fuse.sshfs" in line(lines, "PASS  filesystem: ")
    assert "two nodes at once" in line(lines, "PASS  lock exclusion (hardlink, two processes on this host): ")


@pytest.mark.parametrize("shared_dir", ["glusterfs"], indirect=True)
def test_plain_doctor_on_glusterfs_passes_with_flock(shared_dir):
    result = hopt_doctor(shared_dir.b)

    assert result.returncode == 0, result.stdout + result.stderr
    assert line(result.stdout.splitlines(), "PASS  filesystem: ").startswith(
        f"PASS  filesystem: fuse.glusterfs at {MOUNTS['glusterfs'].b} (")

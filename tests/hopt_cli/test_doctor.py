"""`hopt doctor`: every check passes on a sound local filesystem, a failing one makes it exit 1, the filesystem
line, bounded lock probes, and `--peer` between two processes of this host (the advice per filesystem type:
tests/hopt_cli/store/test_filesystems.py)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from hopt_cli.doctor import local, peer
from hopt_cli.store import locking
from hopt_cli.store.filesystems import LOCAL_TYPES
from hopt_cli.store.mounts import Mount, mount_of
from hopt_cli.store.paths import ExperimentPaths
from tests.conftest import REPO, toy_recipe

LOCAL_LINES = ["filesystem", "hard links", "lock exclusion ({kind}, two processes on this host)", "atomic replace",
               "fsync", "clock skew", "free space"]
SSHFS = Mount("/mnt/x", "fuse.sshfs", "me@host:/export", "rw,nosuid,nodev,relatime,rw,user_id=0,group_id=0")


def hopt_doctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hopt_cli", "doctor", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def start_doctor(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hopt_cli", "doctor", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kind", ["flock", "hardlink"])
def test_every_check_passes_on_a_local_filesystem(tmp_path, kind):
    result = hopt_doctor("--dir", str(tmp_path), "--lock", kind)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"PASS  {name.format(kind=kind)}" for name in LOCAL_LINES]
    mount = mount_of(tmp_path)
    if mount is not None and mount.fstype in LOCAL_TYPES:
        assert f"{mount.fstype} at {mount.point}" in lines[0] and "a local filesystem" in lines[0]
    assert "two nodes at once" in lines[2]  # the probe says what it did not test: exclusion across nodes
    assert list(tmp_path.iterdir()) == []  # the scratch folder is gone


def test_too_little_free_space_fails_with_exit_1(tmp_path):
    result = hopt_doctor("--dir", str(tmp_path), "--min-free-gb", "1e9")

    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("FAIL  free space: ")
    assert result.stdout.count("PASS") == len(LOCAL_LINES) - 1


def test_the_lock_kind_defaults_to_the_experiments(tmp_path, write_recipe):
    root = tmp_path / "exp"
    init = subprocess.run([sys.executable, "-m", "hopt_cli", "init", str(write_recipe(toy_recipe(lock="hardlink"))),
                           "--dir", str(root)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr

    result = hopt_doctor("--dir", str(root))

    assert result.returncode == 0 and "lock exclusion (hardlink" in result.stdout


def test_clock_skew_above_the_limit_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "touch", lambda path: local.time.time() + 42)

    check = local.clock_skew(tmp_path / "probe")

    assert not check.ok
    assert check.line().startswith("FAIL  clock skew: the filesystem's clock is 42.0 s ahead of this host's")


def test_the_filesystem_line_fails_only_for_a_lock_kind_known_not_to_exclude(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "mount_of", lambda path: SSHFS)

    flock, hardlink, undecided = (local.filesystem(tmp_path, kind) for kind in ("flock", "hardlink", None))

    assert flock.line().startswith("FAIL  filesystem: fuse.sshfs at /mnt/x (me@host:/export): flock does not exclude")
    assert hardlink.ok and undecided.ok and "use `lock: hardlink`" in hardlink.detail


def test_a_refused_flock_is_a_fail_line_with_the_advice_not_a_crash(tmp_path, monkeypatch):
    problem = "flock does not exclude across sshfs mounts (each mount locks only itself)"
    monkeypatch.setattr(locking, "flock_problem", lambda path: problem)
    monkeypatch.setattr(local, "flock_problem", lambda path: problem)

    check = local.lock_exclusion(ExperimentPaths(tmp_path), "flock")

    assert check.line() == (f"FAIL  lock exclusion (flock, two processes on this host): hopt refuses it here: "
                            f"{problem}; use `lock: hardlink`")


def test_a_lock_that_cannot_be_taken_fails_in_seconds_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "LOCK_SECONDS", 0.3)
    monkeypatch.setattr(locking.HardLinkLock, "_try_acquire", lambda self: False)  # as on a link() that never wins
    paths = ExperimentPaths(tmp_path)
    paths.clock.touch()

    started = time.monotonic()
    check = local.lock_exclusion(paths, "hardlink")

    assert time.monotonic() - started < 5
    assert check.line().startswith("FAIL  lock exclusion (hardlink, two processes on this host): could not take a "
                                   "hardlink lock that nothing else uses within 0.3 s")


def test_hard_links_that_do_not_work_fail(tmp_path, monkeypatch):
    def refuse(source, target):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(local.os, "link", refuse)

    check = local.hard_links(tmp_path)

    assert not check.ok and check.detail.startswith(f"link() fails here ({os.strerror(errno.EPERM)})")


def test_hard_links_report_what_link_counts_read(tmp_path):
    check = local.hard_links(tmp_path)

    assert check.ok and "st_nlink reads 2" in check.detail and "never relies on link counts" in check.detail


def test_the_peer_lines_say_what_each_node_saw():
    names = {"host": "node-a", "guest": "node-b"}
    leaky = {"took": True, "handoff": 0.004, "at_once": True}
    exclusive = {"took": False, "handoff": 0.004, "at_once": False, "setattr": 0.0}

    flock = peer.exclusion_check("flock", {"host": leaky, "guest": exclusive}, names)
    hardlink = peer.exclusion_check("hardlink", {"host": exclusive, "guest": exclusive}, names)
    appended = peer.append_check("hardlink", {"host": exclusive, "guest": exclusive}, names)
    listed = peer.listing_check({"host": 20.7, "guest": 0.01}, names)
    unseen = peer.replace_check({"host": None, "guest": 1.0}, names)

    assert flock.line() == ("FAIL  lock exclusion across nodes (flock): node-b took it while node-a held it: flock "
                            "does not exclude across these nodes: use `lock: hardlink`")
    assert hardlink.ok and hardlink.detail.endswith("changed hands in 4 ms from node-a to node-b and 4 ms from node-b "
                                                    "to node-a")
    assert appended.ok and "node-b read node-a's line only after a setattr" in appended.detail
    assert listed.ok and listed.detail.startswith("node-a listed node-b's new file after 20.7 s; node-b listed "
                                                  "node-a's new file at once (a cached listing")
    assert not unseen.ok and "node-a had not read node-b's new content after 10 s" in unseen.detail
    assert peer.recommendation({"flock": False, "hardlink": True}, None).line().startswith("use lock: hardlink")
    assert peer.recommendation({"flock": True, "hardlink": True}, None).line().startswith("use lock: flock")
    assert not peer.recommendation({"flock": False, "hardlink": False}, None).ok


def test_two_peers_on_one_host_run_every_test_and_say_nothing_crossed_nodes(tmp_path):
    peers = [start_doctor("--peer", "--dir", str(tmp_path), "--peer-timeout", "30") for _ in range(2)]
    outputs = [peer.communicate(timeout=90)[0] for peer in peers]

    for peer, output in zip(peers, outputs):
        lines = output.splitlines()
        assert peer.returncode == 1, output
        assert [line for line in lines if line.startswith("FAIL")] == [next(l for l in lines if "peer:" in l)]
        assert "on this same host" in output
        assert {line.split(":")[0] for line in lines if "across nodes" in line} == {
            "PASS  lock exclusion across nodes (flock)", "PASS  lock exclusion across nodes (hardlink)"}
        assert any(line.startswith("PASS  readdir freshness") for line in lines)
        assert any(line.startswith("PASS  freshness after a replace") for line in lines)
        assert lines[-1].startswith("no lock kind recommended: both processes ran on")
    tested = [[line for line in out.splitlines() if "across nodes" in line or "freshness" in line] for out in outputs]
    assert tested[0] == tested[1]  # both print the same lines for what they tested together
    assert list(tmp_path.iterdir()) == []  # the session folder and the scratch folders are gone


def test_a_peer_alone_says_so_after_its_timeout(tmp_path):
    started = time.monotonic()
    result = hopt_doctor("--peer", "--dir", str(tmp_path), "--peer-timeout", "1")

    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith("FAIL  peer: no peer showed up in 1 s: start `hopt doctor --peer")
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []

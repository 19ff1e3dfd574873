"""Both lock kinds: exclusion between real processes, holders killed by SIGKILL, timeouts, operator mistakes."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import hopt_cli.store
from hopt_cli import cli
from hopt_cli.errors import LockTimeout
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store, locking
from hopt_cli.store.leases import Holder
from hopt_cli.store.locking import HardLinkLock, abandoned_claims, make_lock
from hopt_cli.store.paths import ExperimentPaths
from tests.conftest import REPO, toy_recipe

KINDS = ("flock", "hardlink")


def paths_in(root: Path) -> ExperimentPaths:
    paths = ExperimentPaths(root)
    paths.clock.touch()
    return paths


def _count(args: tuple[str, str, int]) -> None:
    """Increment a counter file `times` times, read-modify-write, under the lock."""
    root, kind, times = args
    paths = ExperimentPaths(Path(root))
    counter = paths.root / "counter"
    for _ in range(times):
        with make_lock(kind, paths):
            value = int(counter.read_text())
            counter.write_text(str(value + 1))


def in_child(root: Path, kind: str, body: str, timeout: float = 0.3) -> subprocess.CompletedProcess:
    """Run `body` in another process with `lock` (of `kind`, on `root`) in scope."""
    program = (f"from pathlib import Path\nfrom hopt_cli.errors import LockTimeout\n"
               f"from hopt_cli.store.locking import make_lock\n"
               f"from hopt_cli.store.paths import ExperimentPaths\n"
               f"lock = make_lock({kind!r}, ExperimentPaths(Path({str(root)!r})), timeout={timeout})\n{body}")
    return subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", KINDS)
class TestEveryLockKind:
    def test_processes_exclude_each_other(self, tmp_path: Path, kind: str) -> None:
        paths_in(tmp_path)
        (tmp_path / "counter").write_text("0")
        with ProcessPoolExecutor(3) as pool:
            list(pool.map(_count, [(str(tmp_path), kind, 40)] * 3))
        assert (tmp_path / "counter").read_text() == "120"

    def test_a_second_process_waits_while_the_lock_is_held(self, tmp_path: Path, kind: str) -> None:
        paths = paths_in(tmp_path)
        probe = "try:\n    with lock: print('took it')\nexcept LockTimeout as err: print('timeout:', err)\n"
        with make_lock(kind, paths):
            held = in_child(tmp_path, kind, probe)
        free = in_child(tmp_path, kind, probe)

        assert held.stdout.startswith("timeout: ") and "could not take the experiment lock" in held.stdout
        assert free.stdout == "took it\n", free.stderr

    def test_the_lock_of_a_holder_killed_by_sigkill_is_taken_over(self, tmp_path: Path, kind: str) -> None:
        paths = paths_in(tmp_path)
        died = in_child(tmp_path, kind, "import os, signal\nlock.__enter__()\nos.kill(os.getpid(), signal.SIGKILL)\n")
        assert died.returncode == -signal.SIGKILL

        with make_lock(kind, paths, timeout=5):
            pass
        assert paths.hardlink_claims() == [] and not paths.hardlink_lock.exists()

    def test_timeout_is_a_hopt_error_naming_the_file(self, tmp_path: Path, kind: str) -> None:
        paths = paths_in(tmp_path)
        with make_lock(kind, paths):
            with pytest.raises(LockTimeout, match=r"could not take the experiment lock in 0 s") as caught:
                with make_lock(kind, paths, timeout=0.05):
                    pass
        assert caught.value.path.parent == tmp_path
        assert paths.hardlink_claims() == []  # the waiter that gave up left nothing behind

    def test_a_timeout_stops_the_command_with_one_line_exit_1(self, tmp_path: Path, kind: str, monkeypatch,
                                                              capsys) -> None:
        store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(lock=kind)))
        monkeypatch.setattr(hopt_cli.store, "make_lock",
                            lambda lock_kind, paths: make_lock(lock_kind, paths, timeout=0.05))
        monkeypatch.setattr(sys, "argv", ["hopt", "retry", "--dir", str(store.paths.root)])

        with store.lock, pytest.raises(SystemExit) as exit:
            cli.main()

        assert exit.value.code == 1
        assert capsys.readouterr().err == (f"hopt: error: {store.lock.path}: could not take the experiment lock in "
                                           "0 s; a process may hang inside a critical section (check `hopt status`)\n")


def test_a_deleted_flock_file_is_recreated(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    with make_lock("flock", paths):
        pass
    paths.lock.unlink()

    with make_lock("flock", paths):
        assert paths.lock.exists()


def test_a_flock_file_deleted_while_held_is_reported_at_release(tmp_path: Path, caplog) -> None:
    paths = paths_in(tmp_path)
    with make_lock("flock", paths):
        paths.lock.unlink()
    assert "was deleted or replaced while we held it" in caplog.text


def test_a_flock_file_replaced_while_locking_is_locked_again(tmp_path: Path, monkeypatch) -> None:
    """An operator deletes `lock` between a locker's open() and flock(): the locker must not keep a lock
    on the orphaned inode (a newcomer would lock the new file, and both would be inside)."""
    paths = paths_in(tmp_path)
    real_flock = fcntl.flock
    calls = []

    def operator_strikes(fd: int, operation: int) -> None:
        if not calls:
            paths.lock.unlink()
        calls.append(fd)
        real_flock(fd, operation)

    monkeypatch.setattr(locking.fcntl, "flock", operator_strikes)
    lock = make_lock("flock", paths)
    with lock:
        assert len(calls) == 2
        assert os.fstat(lock._fd).st_ino == paths.lock.stat().st_ino


def test_a_flock_waiter_opens_the_file_once_and_closes_it_when_it_gives_up(tmp_path: Path, monkeypatch) -> None:
    """A waiter polls every millisecond: reopening the file for each attempt cost it two more round trips per
    attempt on a network filesystem, load that slows the holder."""
    paths = paths_in(tmp_path)
    opens, attempts = [], []
    real_open, real_flock = os.open, fcntl.flock
    monkeypatch.setattr(locking.os, "open",
                        lambda path, *args: (Path(path) == paths.lock and opens.append(path)) or real_open(path, *args))
    monkeypatch.setattr(locking.fcntl, "flock", lambda fd, op: attempts.append(fd) or real_flock(fd, op))
    descriptors = len(os.listdir("/proc/self/fd"))

    with make_lock("flock", paths):
        with pytest.raises(LockTimeout):
            with make_lock("flock", paths, timeout=0.05):
                pass

    assert len(attempts) >= 3 and len(opens) == 2  # the holder's open and the waiter's one, for every attempt
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_a_hardlink_lock_of_a_live_holder_elsewhere_is_broken_only_when_stale(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    elsewhere = HardLinkLock(paths)
    elsewhere.here = Holder("lock", "another-host", 1, 1)
    elsewhere.__enter__()
    with pytest.raises(LockTimeout):
        with HardLinkLock(paths, timeout=0.05):
            pass
    old = paths.hardlink_lock.stat().st_mtime - 61
    os.utime(paths.hardlink_lock, (old, old))

    with HardLinkLock(paths, timeout=1):
        pass

    assert paths.hardlink_claims() == [] and not paths.hardlink_lock.exists()


def test_claims_of_dead_waiters_are_found_and_the_holders_is_not(tmp_path: Path) -> None:
    paths = paths_in(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = Holder.this_process("lock")
    ghost = paths.hardlink_claim("ghost")
    ghost.write_text(json.dumps({"holder": {**here.__dict__, "pid": int(dead.stdout)}, "token": "ghost"}))
    old = paths.hardlink_claim("old")
    old.write_text("{}")
    os.utime(old, (1, 1))
    live = paths.hardlink_claim("live")
    live.write_text(json.dumps({"holder": here.__dict__, "token": "live"}))
    now = paths.clock.stat().st_mtime

    with HardLinkLock(paths):
        found = abandoned_claims(paths, here, now, older_than=600)

    assert found == sorted([ghost, old])

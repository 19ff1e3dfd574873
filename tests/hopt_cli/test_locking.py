"""The experiment lock across real processes: exclusive, released by death, bounded waits."""
from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from hopt_cli.errors import HoptError
from hopt_cli.store.locking import ExperimentLock
from tests.conftest import REPO

HOLD_FOREVER = ("import sys, time; from pathlib import Path; from hopt_cli.store.locking import ExperimentLock\n"
                "lock = ExperimentLock(Path(sys.argv[1])); lock.__enter__(); print('held', flush=True)\n"
                "time.sleep(600)")


def _holder(path: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOREVER, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _increment(args: tuple[str, int]) -> None:
    path, times = args
    lock = ExperimentLock(Path(path).with_suffix(".lock"))
    for _ in range(times):
        with lock:
            count = int(Path(path).read_text())
            Path(path).write_text(str(count + 1))


def test_the_lock_excludes_other_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_increment, [(str(counter), 100)] * 4))

    assert counter.read_text() == "400"


def test_a_holder_killed_by_sigkill_releases_the_lock(tmp_path):
    holder = _holder(tmp_path / "lock")
    holder.kill()
    holder.wait()
    lock = ExperimentLock(tmp_path / "lock", timeout=10)

    with lock:
        assert lock.waited < 10
    assert lock.held > 0


def test_a_wait_longer_than_the_timeout_is_an_error_naming_the_lock(tmp_path):
    holder = _holder(tmp_path / "lock")
    try:
        started = time.monotonic()
        with pytest.raises(HoptError, match=r"lock: could not take the experiment lock in 0 s"):
            with ExperimentLock(tmp_path / "lock", timeout=0.2):
                pass
        assert 0.2 <= time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()

"""Lease holders: a process is gone only where its pid means the same process, and a zombie is gone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from hopt_cli.store.leases import Holder


def _holder(pid: int, host: str | None = None) -> Holder:
    here = Holder.this_process("here")
    return Holder("w", host or here.host, pid, here.pidns)


def test_a_killed_worker_its_parent_has_not_reaped_yet_is_gone():
    """`hopt status` said `workers: 2 live` right after every worker was killed: a zombie answers kill(0)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    here = Holder.this_process("here")
    try:
        assert not _holder(child.pid).is_gone(here)
        os.kill(child.pid, signal.SIGKILL)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has exited; left unreaped: a zombie
        assert _holder(child.pid).is_gone(here)
    finally:
        child.kill()
        child.wait()
    assert _holder(child.pid).is_gone(here)


def test_a_holder_on_another_host_or_this_very_process_is_never_gone():
    here = Holder.this_process("here")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    assert not _holder(int(dead.stdout), host="elsewhere").is_gone(here)
    assert not _holder(os.getpid()).is_gone(here)
    assert Holder("w", here.host, int(dead.stdout), None).is_gone(here) is False  # no pid namespace known

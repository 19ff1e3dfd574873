"""Helpers for the tests that submit real jobs: is a cluster there, what state is a job in, bounded waits.

The tests marked `slurm` use the `cluster` fixture: it skips when no SLURM answers, and fails instead
when CI=true (CI starts one with tests/slurm/start-cluster.sh, so a missing cluster is a broken CI).
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable

import pytest

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="session")
def cluster() -> None:
    """Skip unless a SLURM cluster answers (asked once); with CI=true a missing cluster is a failure."""
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=15)
        reason = None if answer.returncode == 0 and "up" in answer.stdout.split() else answer.stderr.strip()
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        reason = str(err)
    if reason is not None:
        message = (f"no SLURM cluster answers sinfo ({reason or 'no partition up'}); "
                   "run tests/slurm/start-cluster.sh")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def job_states(job_id: str) -> list[str]:
    """The states of every task of a job; [] once SLURM has forgotten it, ["UNKNOWN"] if scontrol failed."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                           timeout=15)
    if shown.returncode != 0:
        return [] if "Invalid job id" in shown.stderr else ["UNKNOWN"]
    return re.findall(r"\bJobState=(\S+)", shown.stdout)


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.5) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def wait_until_finished(job_id: str, timeout: float) -> None:
    wait_for(lambda: all(state in FINAL_STATES for state in job_states(job_id)), timeout,
             f"job {job_id} to finish")

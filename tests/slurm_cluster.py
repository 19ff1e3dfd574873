"""Helpers for the tests that submit real jobs: is a cluster there, what state is a job in, bounded waits.

The tests marked `slurm` use the `cluster` fixture: it skips when the suite's own cluster does not answer
(none, or another one whose settings the tests' waits do not allow for), and fails instead when CI=true
(CI starts one with tests/slurm/start-cluster.sh, so a missing cluster is a broken CI).
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


# What the tests' waits assume of the cluster: tests/slurm/slurm.conf.in, as start-cluster.sh writes it.
SUITE_SETTINGS = {"ClusterName": "hopt", "AuthInfo": "cred_expire=10"}


def cluster_problem() -> str | None:
    """Why the SLURM cluster that answers is not usable by the suite (None when it is the suite's own).

    Any cluster answers sinfo, but the tests' hang guards assume the settings of tests/slurm/slurm.conf.in:
    a requeued task under another cluster's cred_expire (120 s by default) waits past them.
    """
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=15)
        if answer.returncode != 0 or "up" not in answer.stdout.split():
            return f"no SLURM cluster answers sinfo ({answer.stderr.strip() or 'no partition up'})"
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15)
    except (FileNotFoundError, subprocess.TimeoutExpired) as err:
        return f"no SLURM cluster answers sinfo ({err})"
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", config.stdout, re.MULTILINE))
    wrong = [f"{key}={settings.get(key, '?')} (the suite's: {value})" for key, value in SUITE_SETTINGS.items()
             if settings.get(key) != value]
    if wrong:
        return f"the SLURM cluster that answers is not the suite's own: {', '.join(wrong)}"
    return None


@pytest.fixture(scope="session")
def cluster() -> None:
    """Skip unless the suite's own SLURM cluster answers (asked once); with CI=true, fail instead."""
    problem = cluster_problem()
    if problem is not None:
        message = f"{problem}; run tests/slurm/start-cluster.sh"
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

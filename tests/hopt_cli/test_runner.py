"""`hopt run`'s process setup: how the cores are shared between local workers."""
from __future__ import annotations

import os

from hopt_cli.runner import worker_environment


def test_each_worker_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)

    assert worker_environment(4)["OMP_NUM_THREADS"] == "2"
    assert worker_environment(16)["MKL_NUM_THREADS"] == "1"


def test_a_thread_count_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")

    assert worker_environment(2)["OMP_NUM_THREADS"] == "3"

"""Timing lines: what `hopt worker --verbose` logs per step, and what the overhead benchmark reads back."""
from __future__ import annotations

import logging

from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.timing import StepTiming
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe


def test_a_timing_line_reads_back_as_the_same_record():
    timing = StepTiming("commit", 0.000125, 0.0021, 0.0031, 1_800_000_000.125)
    line = f"2026-01-01 12:00:00,000 local-0 DEBUG {timing}"

    assert StepTiming.parse(line) == timing
    assert StepTiming.parse("2026-01-01 12:00:00,000 local-0 INFO claim member 3 interval 4: continue") is None


def test_the_worker_takes_the_lock_once_per_interval_after_its_first_claim(tmp_path, caplog):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=3)))
    caplog.set_level(logging.DEBUG, logger="hopt")

    report = Worker(store, "w").run()

    timings = [t for t in (StepTiming.parse(r.getMessage()) for r in caplog.records) if t is not None]
    # each commit claims the next interval (the last one finds the experiment complete) in its critical section
    assert [t.step for t in timings] == ["claim"] + ["commit"] * report.commits and report.commits == 6
    assert all(0 <= t.waited and 0 < t.held <= t.total for t in timings)


def test_without_debug_logging_the_worker_logs_no_timing(tmp_path, caplog):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=1)))
    caplog.set_level(logging.INFO, logger="hopt")

    Worker(store, "w").run()

    assert not any(StepTiming.parse(r.getMessage()) for r in caplog.records)

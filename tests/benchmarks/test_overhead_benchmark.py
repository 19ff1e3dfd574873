"""Smoke test of benchmarks/overhead.py: a tiny run through real workers yields a complete row."""
from __future__ import annotations

from benchmarks.overhead import Runs, hopt_row, report, run_hopt


def test_a_tiny_run_counts_every_interval_and_times_every_step():
    runs = Runs()
    run_hopt(population=4, intervals=3, workers=1, runs=runs)

    assert runs.intervals[0] <= 12 and runs.wall[0] > runs.span[0] > 0
    timings = runs.timings[0][0]
    assert [t.step for t in timings] == ["claim"] + ["commit"] * runs.intervals[0]
    assert runs.disk_excess[0] <= 2
    row = hopt_row(1, runs)
    assert row.startswith("| hopt | 1 | ") and row.count("|") == 14 and "| - |" not in row


def test_the_report_has_a_row_per_worker_count_and_no_ray_unless_asked():
    text = report(population=4, intervals=2, workers=[1, 2], repeats=1, ray_python=None)

    assert "| hopt | 1 |" in text and "| hopt | 2 |" in text
    assert "Ray" not in text


def test_a_scratch_folder_gets_the_experiments_and_a_table_of_its_operations(tmp_path):
    text = report(population=4, intervals=2, workers=[1], repeats=1, ray_python=None, scratch=tmp_path,
                  lock="hardlink")

    assert "| hopt | 1 |" in text and f"filesystem operations in {tmp_path} (200 each)" in text
    assert "| append one line + fsync (a journal event) |" in text and not list(tmp_path.iterdir())

"""A tiny run of the policy benchmark end to end: its files, its table and its merge of later runs."""
from __future__ import annotations

import csv

from benchmarks import policies
from benchmarks.report import best_curve


def test_a_tiny_benchmark_writes_its_table_plot_and_rows(tmp_path):
    small = ["--seeds", "2", "--toys", "T1", "--intervals", "4", "--population", "4", "--workers", "2",
             "--processes", "1", "--out", str(tmp_path)]

    assert policies.main([*small, "--policies", "romul,random"]) == 0
    assert policies.main([*small, "--policies", "pbt"]) == 0

    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert sorted((r["policy"], r["seed"]) for r in rows) == [(p, s) for p in ("pbt", "random", "romul")
                                                               for s in ("0", "1")]
    table = (tmp_path / "table.md").read_text()
    assert "| romul | " in table and "| pbt | " in table and "| random | " in table
    assert table.count("python -m benchmarks.policies") == 2
    assert (tmp_path / "policies.png").stat().st_size > 10_000


def test_the_best_curve_follows_the_best_observed_score_not_the_best_true_score():
    commits = [{"interval": 0, "score": 1.0, "metrics": {"true_score": 0.5}},
               {"interval": 0, "score": 0.9, "metrics": {"true_score": 0.95}},
               {"interval": 1, "score": 2.0, "metrics": {"true_score": 1.9}}]

    assert best_curve(commits, 2) == (0.5, 1.9)
    assert best_curve(commits, 1, sign=-1.0) == (0.95,)

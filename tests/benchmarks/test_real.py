"""benchmarks/real.py: the table of real training runs, and one tiny run through real `hopt run` workers."""
from __future__ import annotations

import csv
import json

import pytest

from benchmarks.real import Job, main, recipe_for, render_table


def rows(tests: dict[str, list[float]]) -> list[dict]:
    return [{"task": "charlm", "policy": policy, "seed": seed, "val": value, "test": value, "population": 8,
             "intervals": 16, "steps": 40, "seconds": 100.0}
            for policy, values in tests.items() for seed, value in enumerate(values)]


def test_the_table_gives_romuls_paired_record_and_its_test_against_each_policy():
    # bits per character, lower is better: romul beats de on all six seeds and ties random on each
    table = render_table(rows({"romul": [1.9, 2.0, 2.1, 1.8, 2.2, 1.95], "de": [2.0, 2.2, 2.4, 2.2, 2.7, 2.55],
                               "random": [1.9, 2.0, 2.1, 1.8, 2.2, 1.95]}), [])

    assert "| romul | 6 | **1.9750 [1.9125, 2.0750]** |" in table
    assert "| random | 6 | **1.9750 [1.9125, 2.0750]** |" in table
    # six wins of six: the exact two-sided p of the signed-rank test is 2 / 2^6
    assert "6/0/0 against de (p = 0.0312)" in table
    # no difference on any seed: nothing to test, p = 1
    assert "0/6/0 against random (p = 1)" in table
    assert "ROMUL has the best median test metric, tied with random" in table


def test_a_loss_on_the_median_is_said_as_one():
    table = render_table(rows({"romul": [2.3, 2.4, 2.5], "de": [2.0, 2.1, 2.6]}), [])

    assert "ROMUL does NOT have the best median test metric (de has it)" in table
    assert "1/0/2 against de (p = 0.5)" in table


def test_a_trial_rule_is_checked_named_in_the_table_and_kept_apart_from_other_settings(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"command": "python -m benchmarks.real --romul F=0.8", "runs": 1, "wall_seconds": 60.0, "torch": "2",
               "load_before": "0", "machine": {"cpu": "x", "cores": 2, "python": "3", "commit": "c"},
               "romul": {"F": 0.8}}
    (out / "provenance.json").write_text(json.dumps([earlier]))
    for settings, says in ((["wait=false"], "policy.wait: is an ablation switch"), (["F=-1"], "policy.F: must be"),
                           (["F"], "'F' is not KEY=VALUE"), ([], "was made with other ROMUL settings"),
                           (["F=0.5"], "was made with other ROMUL settings")):
        with pytest.raises(SystemExit) as exit_:
            main(["--tasks", "digits", "--seeds", "0", "--out", str(out), "--romul", *settings])
        assert exit_.value.code == 2
        assert says in capsys.readouterr().err

    assert main(["--tasks", "digits", "--seeds", "0", "--out", str(out), "--romul", "F=0.8"]) == 0
    assert "its recipe settings were `F: 0.8`" in (out / "table.md").read_text()
    assert recipe_for(Job("digits", "romul", 3), {}, {"F": 0.8})["policy"] == {"name": "romul", "F": 0.8}
    assert recipe_for(Job("digits", "de", 3), {}, {"F": 0.8})["policy"] == {"name": "de"}


@pytest.mark.slow  # two `hopt run`s of a tiny digits CNN: 30 to 40 s on two busy cores
def test_a_tiny_run_trains_each_policy_and_records_its_exported_models_test_metric(tmp_path):
    out = tmp_path / "out"

    assert main(["--tasks", "digits", "--policies", "romul,random", "--seeds", "1", "--first-seed", "7",
                 "--population", "2", "--intervals", "2", "--steps", "2", "--out", str(out),
                 "--scratch", str(tmp_path / "scratch")]) == 0

    with open(out / "runs.csv", newline="") as handle:
        recorded = list(csv.DictReader(handle))
    assert [(r["policy"], r["seed"], r["intervals"]) for r in recorded] == [("romul", "7", "2"), ("random", "7", "2")]
    assert all(0.0 <= float(r["test"]) <= 1.0 and 0.0 <= float(r["val"]) <= 1.0 for r in recorded)
    assert "## digits (recipes/real-digits.yaml: population 2, 2 intervals of 2 steps" in (out / "table.md").read_text()

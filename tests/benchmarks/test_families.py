"""The family benchmark: its instances, its halves, its Wilcoxon test, and a tiny run end to end."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import families
from benchmarks.family_report import Row, ranks, render_report
from benchmarks.stats import holm, wilcoxon
from hopt_cli.trainable import Context
from workers.families import FAMILIES, Instance, draw


def _value(spec: dict, u: float) -> float:
    """The hyperparameter value at unit coordinate `u` of a numeric spec."""
    if spec["type"] == "log":
        return spec["low"] * (spec["high"] / spec["low"]) ** u
    return spec["low"] + u * (spec["high"] - spec["low"])


def _train(instance: Instance, hparams: dict, intervals: int, root: Path, seed: int = 0) -> list[dict]:
    """Run `intervals` intervals of one member, each resuming from the last; the metrics of each."""
    metrics, parent = [], None
    for t in range(intervals):
        out = root / f"{seed}-{t}"
        out.mkdir()
        metrics.append(instance(Context(hparams, parent, out, t, 1, 0, seed * 1000 + t)))
        parent = out
    return metrics


@pytest.mark.parametrize("family", FAMILIES)
def test_an_instance_is_determined_by_its_seed_and_differs_across_seeds(family):
    first, again, other = draw(family, 1, 20), draw(family, 1, 20), draw(family, 3, 20)

    assert json.dumps(first.params) == json.dumps(again.params) and first.noise == again.noise
    assert json.dumps(first.params) != json.dumps(other.params)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_true_score_is_noise_free_and_the_score_carries_the_instance_noise(family, tmp_path):
    noisy = next(draw(family, s, 20) for s in range(50) if draw(family, s, 20).noise == "high")
    quiet = next(draw(family, s, 20) for s in range(50) if draw(family, s, 20).noise == "none")
    for instance, name in ((noisy, "noisy"), (quiet, "quiet")):
        rng = np.random.default_rng(0)
        hparams = {n: (s["values"][0] if s["type"] == "choice" else _value(s, rng.random()))
                   for n, s in instance.space.items()}
        (tmp_path / name).mkdir()
        runs = [_train(instance, hparams, 3, tmp_path / name, seed) for seed in (1, 2)]
        assert [m["true_score"] for m in runs[0]] == [m["true_score"] for m in runs[1]]
        if instance is quiet:
            assert all(m["score"] == m["true_score"] for m in runs[0])
        else:
            spread = np.std([m["score"] - m["true_score"] for m in runs[0] + runs[1]])
            assert 0.1 * instance.noise_std < spread < 5 * instance.noise_std


@pytest.mark.parametrize("family", ["ellipsoid", "rotated", "far_start", "categorical", "interacting"])
def test_the_known_optimum_is_reached_at_the_optimal_point_and_nowhere_beaten(family, tmp_path):
    instance = draw(family, 5, 20)
    p = instance.params
    numeric = [n for n in instance.space if instance.space[n]["type"] != "choice"]
    if family == "categorical":
        best = {"kind": instance.space["kind"]["values"][p["best"]]}
        target = [p["x0_star"][p["best"]], *p["u_star"]]
    else:
        best, target = {}, p["u_star"]
    best.update({n: _value(instance.space[n], u) for n, u in zip(numeric, target)})

    final = _train(instance, best, 40, tmp_path)[-1]["true_score"]

    assert instance.optimum == 0.0 and -1e-9 < final <= 0.0
    rng = np.random.default_rng(1)
    for _ in range(20):
        anywhere = {n: (rng.choice(s["values"]) if s["type"] == "choice" else _value(s, rng.random()))
                    for n, s in instance.space.items()}
        _, score = instance.step(p, anywhere, None, 0)
        assert score <= 0.0


def _final(instance: Instance, schedule, intervals: int) -> float:
    """The true score after `intervals` intervals of one member trained with `schedule(t)`'s hyperparameters."""
    state, score = None, None
    for t in range(intervals):
        state, score = instance.step(instance.params, schedule(t), state, t)
    return score


@pytest.mark.parametrize("budget", [20, 60])
def test_the_deceptive_schedule_rewards_a_linear_decrease_and_the_greedy_drop_wins_early(budget):
    for seed in range(1, 11, 2):
        instance = draw("deceptive", seed, budget)
        h0 = instance.params["h0"]
        linear = _final(instance, lambda t: {"h": h0 * (1 - t / budget)}, budget)
        constant = max(_final(instance, lambda t, h=h: {"h": h}, budget) for h in np.linspace(0, 1, 21))
        dropped = _final(instance, lambda t: {"h": 0.0}, budget)
        assert linear > constant > dropped
        early = budget // 5
        assert _final(instance, lambda t: {"h": 0.0}, early) > _final(instance, lambda t: {"h": h0 * (1 - t / budget)},
                                                                       early)


@pytest.mark.parametrize("budget", [20, 60])
def test_the_late_regulariser_pays_off_only_after_most_of_the_budget(budget):
    for seed in range(1, 11, 2):
        instance = draw("late_reg", seed, budget)
        p = instance.params
        good = {"reg": _value(instance.space["reg"], p["e_star"]), "x": p["x_star"]}
        none = {"reg": 1e-5, "x": p["x_star"]}
        assert _final(instance, lambda t: good, budget) > _final(instance, lambda t: none, budget) + 0.5
        assert _final(instance, lambda t: none, budget // 2) > _final(instance, lambda t: good, budget // 2)
        assert p["onset"] >= 0.6 * budget - 1


def test_the_interacting_family_couples_each_log_coordinate_with_a_linear_one():
    for seed in range(1, 11, 2):
        instance = draw("interacting", seed, 20)
        A = np.array(instance.params["A"])
        kinds = [instance.space[n]["type"] for n in instance.space]
        assert kinds[::2] == ["log"] * (len(kinds) // 2) and kinds[1::2] == ["float"] * (len(kinds) // 2)
        for i in range(0, len(kinds), 2):
            block = A[i:i + 2, i:i + 2]
            eigen = np.linalg.eigvalsh(block)
            assert 99 < eigen[1] / eigen[0] < 1001  # condition 1e2-1e3
            assert abs(block[0, 1]) > 0.2 * max(block[0, 0], block[1, 1])  # axes turned 30-60 degrees: coupled


def test_times_are_fractions_of_training_scaled_to_the_budget():
    for seed in range(10):
        short, long = draw("schedule", seed, 20).params, draw("schedule", seed, 60).params
        assert all(4 <= at <= 16 for at in short["changes"]) and all(12 <= at <= 48 for at in long["changes"])
        assert abs(short["steps"] * 20 - long["steps"] * 60) <= 40
        gap = draw("short_long", seed, 60).params
        assert gap["onset"] <= 30 and math.isclose(gap["kappa"] * 60, draw("short_long", seed, 20).params["kappa"] * 20)


def test_the_halves_are_disjoint_by_construction():
    tune, report = families.instance_seeds("tune", 500), families.instance_seeds("report", 500)

    assert not set(tune) & set(report) and len(set(tune)) == len(set(report)) == 500
    assert families.instance_seeds("report", 3) == [1, 3, 5]


def test_the_wilcoxon_test_matches_known_values():
    # scipy.stats.wilcoxon's documented example (Fisher's data): statistic 24, exact p = 0.041259765625
    d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    test = wilcoxon(d)
    assert (test.plus, test.minus, test.n) == (96.0, 24.0, 15) and test.pvalue == pytest.approx(0.041259765625)
    assert wilcoxon([1, 2, 3, 4, 5]).pvalue == pytest.approx(2 / 32)  # all positive: the most extreme of 2^5
    assert wilcoxon([0, 0, 1, 2, 3, 4, 5]).n == 5  # zero differences are dropped
    assert wilcoxon([0.0, 0.0]).pvalue == 1.0
    # tied magnitudes get mid-ranks 1.5, 1.5, 3; of the 8 sign flips, 3 give W+ >= 4.5: p = 2 * 3/8
    tied = wilcoxon([1, -1, 2])
    assert (tied.plus, tied.minus) == (4.5, 1.5) and tied.pvalue == pytest.approx(0.75)
    assert wilcoxon([1, 1, 2]).pvalue == pytest.approx(2 / 8)


def test_the_wilcoxon_test_agrees_with_scipy_where_scipy_is_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(10):
        d = rng.normal(0.3, 1.0, 20)
        assert wilcoxon(d).pvalue == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)


def test_holm_rejects_step_down_until_the_first_p_over_its_threshold():
    # sorted: 0.005 < 0.05/4, 0.01 < 0.05/3, then 0.03 >= 0.05/2 stops it, so 0.04 is kept too
    assert holm([0.01, 0.04, 0.03, 0.005], 0.05) == [True, False, False, True]
    assert holm([0.01, 0.02], 0.05) == [True, True]
    assert holm([], 0.05) == []


def test_ranks_share_ties():
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [1.5, 4.0, 1.5, 3.0]


def test_a_peer_that_beats_romul_on_every_instance_is_a_missed_target_and_gets_its_section():
    finals = {"romul": 0.0, "pbt": -1.0, "de": -2.0, "random": -3.0, "ray-pbt": 1.0}
    rows = [Row("report", "ellipsoid", 8, 20, policy, "", seed, "none", final + seed, 0.1)
            for policy, final in finals.items() for seed in range(1, 17, 2)]

    report = render_report(rows, [])

    # 8 pairs all one way: the exact two-sided p is 2 / 2**8 = 0.0078
    assert ("- Significantly behind a published peer (ray-pbt): 1 of 1 cell-peer pairs (target: none) — MISSED. Of 1 "
            "such tests at alpha 0.05 uncorrected, a policy no different from the others would lose up to 0.0 by "
            "chance; with Holm's correction over the 1, 1 loss remains:" in report)
    # romul is ahead of its three baselines on every instance: none of the 3 tests is a loss
    assert "Significantly behind a baseline: 0 cell-baseline pairs (target: none) — met. Of 3 such tests" in report
    assert "would lose up to 0.1 by chance; with Holm's correction over the 3, 0 losses remain\n" in report
    assert "## Published peers beside them (populations 8)" in report
    assert "| ray-pbt | 1.00 |" in report and "| romul | 2.00 |" in report
    assert "ray-pbt 0/0/1" in report and "## Ablations" not in report


def test_the_targets_of_issue_24_name_each_cell_that_misses_them():
    """Deceptive, population 8: ROMUL level with random (a miss); population 4 is below the target's floor."""
    finals = {"romul": 0.0, "pbt": -1.0, "de": -2.0, "random": 0.0}
    rows = [Row("report", "deceptive", population, 20, policy, "", seed, "none", final + seed, 0.1)
            for population in (4, 8) for policy, final in finals.items() for seed in range(1, 17, 2)]

    report = render_report(rows, [])

    assert ("- deceptive schedule: significantly ahead of random in 0 of 1 cells at populations >= 8 (target: every "
            "one) — MISSED:\n  - deceptive, population 8, budget 20 vs random: tie, p=1") in report
    assert ("- ROMUL best (median) or statistically tied with the best: 2 of 2 cells (target: every cell) — met."
            in report)


def test_a_tiny_run_of_both_halves_renders_the_report_from_the_report_half_only(tmp_path):
    small = ["--quick", "--families", "ellipsoid,short_long", "--processes", "1", "--out", str(tmp_path)]

    assert families.main([*small, "--half", "tune"]) == 0
    assert families.main([*small, "--half", "tune", "--policies", "romul", "--romul", "CR=0.2"]) == 0
    assert not (tmp_path / "table.md").exists()
    assert families.main(small) == 0

    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    report = [r for r in rows if r["half"] == "report"]
    assert {int(r["seed"]) % 2 for r in report} == {1} and {int(r["seed"]) % 2 for r in rows if r["half"] == "tune"} == {0}
    assert len(report) == 2 * 4 * 2 * 2  # families x policies x instances x populations
    table = (tmp_path / "table.md").read_text()
    assert "2 instances per cell" in table and "| 4 | 6 |" in table and "## Targets" in table
    assert "alpha = 0.05" in table and table.count("python -m benchmarks.families") == 1
    assert "CR=0.2" not in table
    tune = (tmp_path / "tune.md").read_text()
    assert "| shipped defaults |" in tune and "| CR=0.2 |" in tune
    assert (tmp_path / "families.png").stat().st_size > 10_000
    assert len(json.loads((tmp_path / "provenance.json").read_text())) == 3


@pytest.mark.parametrize("argv, says", [
    (["--half", "tune", "--romul", "CR"], "'CR' is not KEY=VALUE"),
    (["--half", "tune", "--romul", "CR=[0.2"], "'CR=[0.2' is not KEY=VALUE"),
    (["--half", "tune", "--romul", "CR=2"], "policy.CR: must be a number in [0, 1]"),
    (["--romul", "CR=0.2"], "a variant is tried on the tune half"),
])
def test_a_bad_variant_is_one_line_before_anything_runs(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        families.main([*argv, "--quick", "--out", str(tmp_path)])

    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert not list(tmp_path.iterdir())

"""The split-half spread of mean ranks, and the instances per cell it says a 0.05 difference needs."""
from __future__ import annotations

import numpy as np

from benchmarks.family_report import Row
from benchmarks.power import split_half


def rows(finals: dict[str, list[float]], cells: int = 3) -> list[Row]:
    return [Row("report", "ellipsoid", 4 * (c + 1), 20, policy, "", 2 * seed + 1, "none", final, 0.0)
            for c in range(cells) for policy, values in finals.items() for seed, final in enumerate(values)]


def test_a_policy_that_always_wins_has_no_spread_and_needs_no_more_instances():
    powers = split_half(rows({"a": [1.0] * 8, "b": [0.0] * 8}), ["a", "b"], splits=20)

    assert [(p.policy, p.half, p.spread, p.needed) for p in powers] == [("a", 4, 0.0, 0), ("b", 4, 0.0, 0)]


def test_policies_level_by_chance_have_a_spread_and_need_more_instances_the_smaller_the_target():
    rng = np.random.default_rng(0)
    finals = {"a": list(rng.random(20)), "b": list(rng.random(20))}

    loose, strict = (split_half(rows(finals), ["a", "b"], splits=50, target=t)[0] for t in (0.5, 0.05))

    assert loose.spread == strict.spread > 0.05
    assert strict.needed > loose.needed >= 1
    # two policies: a rank difference a - b of the one is the negative of the other's
    assert strict.needed == split_half(rows(finals), ["a", "b"], splits=50, target=0.05)[1].needed

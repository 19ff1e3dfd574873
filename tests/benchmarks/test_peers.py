"""The benchmark peers re-implemented from their papers: MF-PBT's sub-populations and migration, FIRE's ranking."""
from __future__ import annotations

import numpy as np

from benchmarks.peers import FirePbt, MfPbt
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.seeds import decision_rng
from hopt_cli.space import SearchSpace

SPACE = SearchSpace.from_recipe({"x": {"type": "float", "low": 0.0, "high": 1.0},
                                 "y": {"type": "float", "low": 0.0, "high": 1.0}})


def member(m: int, scores: list[float], coords: tuple[float, float] | None = None) -> MemberView:
    return MemberView(m, len(scores), tuple(scores), coords or (m / 10, m / 10), 0.1, 0, False, f"ck{m}")


def population(finals: list[float], t: int) -> PopulationView:
    """Members that all scored `final` at each of `t` intervals."""
    return PopulationView(tuple(member(m, [f] * t) for m, f in enumerate(finals)), 60)


def test_mf_pbt_keeps_four_members_per_subpopulation_and_spreads_their_periods():
    policy = MfPbt()

    assert [policy.frequencies(n) for n in (4, 8, 16, 32)] == [[1], [1, 8], [1, 2, 4, 8], [1, 2, 4, 8]]
    assert [policy.group(m, 8) for m in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_mf_pbt_evolves_a_subpopulation_only_at_its_own_period():
    policy = MfPbt()
    # population 8: members 0-3 evolve every 2 intervals, members 4-7 every 16; member 7 is the slow group's worst
    finals = [0.5, 0.4, 0.3, 0.2, 0.9, 0.8, 0.7, 0.1]
    for t, action in ((14, "continue"), (16, "exploit")):
        d = policy.decide(population(finals, t), 7, SPACE, decision_rng(0, 7, t, 0))
        assert d.action == action
    d = policy.decide(population(finals, 16), 7, SPACE, decision_rng(0, 7, 16, 0))
    assert d.parent == 4 and d.coords != (0.4, 0.4)  # the best of its own group's checkpoint, perturbed


def test_mf_pbt_migrants_bring_their_hyperparameters_only_from_a_slower_subpopulation():
    policy = MfPbt()
    finals = [0.5, 0.4, 0.3, 0.2, 0.9, 0.8, 0.25, 0.1]
    view = population(finals, 16)
    # member 2, third of the fast group, takes in the slow group's best (member 4) with its hyperparameters
    fast = policy.decide(view, 2, SPACE, decision_rng(0, 2, 16, 0))
    assert (fast.action, fast.parent, fast.coords) == ("exploit", 4, (0.4, 0.4))
    # member 6, third of the slow group, takes in the fast group's best (member 0) with its own best's (member 4's)
    slow = policy.decide(view, 6, SPACE, decision_rng(0, 6, 16, 0))
    assert (slow.action, slow.parent, slow.coords) == ("exploit", 0, (0.4, 0.4))


def test_fire_ranks_the_member_that_crossed_a_common_range_faster_above_one_level_with_it():
    policy = FirePbt()
    quick = member(0, [0.0, 0.4, 0.5, 0.5, 0.5])
    slow = member(1, [0.0, 0.1, 0.2, 0.3, 0.5])
    apart = member(2, [0.6, 0.6, 0.6, 0.6, 0.6])  # no score range in common with the others: the higher wins

    fitness = policy.fitness([quick, slow, apart], 5)

    assert fitness[2] > fitness[0] > fitness[1]
    assert np.isclose(fitness[2] - int(fitness[2]), 0.5)  # two wins, plus the tie-breaking top score

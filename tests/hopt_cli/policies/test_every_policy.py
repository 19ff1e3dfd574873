"""What every policy guarantees, whatever its rules: checked on populations drawn at random.

Same inputs, same decision; coordinates inside the unit cube and values inside the recipe's bounds;
an explorer never moves; a member continues from a checkpoint no earlier than its own training time.
"""
from __future__ import annotations

import numpy as np
import pytest

from hopt_cli.policies import NAMES, make_policy
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.seeds import decision_rng
from hopt_cli.space import SearchSpace

SPACE = SearchSpace.from_recipe({
    "lr": {"type": "log", "low": 1.0e-5, "high": 1.0, "init": [1.0e-4, 1.0e-3]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99},
    "width": {"type": "int", "low": 8, "high": 512, "log": True},
    "optimizer": {"type": "choice", "values": ["sgd", "adam", "adamw"]},
})
INTERVALS = 12


def random_population(policy, size: int, seed: int) -> PopulationView:
    """A population the policy started itself (so its own explorers), trained to random points."""
    rng = np.random.default_rng(seed)
    members = []
    for m in range(size):
        start = policy.decide(PopulationView(tuple(_fresh(k) for k in range(size)), INTERVALS), m, SPACE,
                              decision_rng(seed, m, 0, 0))
        interval = int(rng.integers(0, INTERVALS))
        scores = tuple(float(s) for s in np.cumsum(rng.normal(0.0, 1.0, interval)))
        last_change = int(rng.integers(0, interval + 1))
        coords = start.coords if start.explorer else tuple(float(u) for u in rng.random(SPACE.dim))
        members.append(MemberView(m, interval, scores, coords, float(rng.uniform(0.005, 0.5)), last_change,
                                  start.explorer, f"m{m}-i{interval}" if interval else None))
    return PopulationView(tuple(members), INTERVALS)


def _fresh(m: int) -> MemberView:
    return MemberView(m, 0, (), (), 0.0, 0, False, None)


CASES = [(name, size, seed) for name in NAMES for size in (4, 8, 16) for seed in range(25)]


@pytest.mark.parametrize("name, size, seed", CASES, ids=[f"{n}-{s}-{k}" for n, s, k in CASES])
def test_every_policy_keeps_its_guarantees(name, size, seed):
    policy = make_policy(name)
    view = random_population(policy, size, seed)
    for me in view.members:
        if me.interval >= INTERVALS:
            continue
        decision = policy.decide(view, me.member, SPACE, decision_rng(seed, me.member, me.interval, 0))

        again = make_policy(name).decide(view, me.member, SPACE, decision_rng(seed, me.member, me.interval, 0))
        assert decision == again, "the same inputs gave another decision"
        assert all(0.0 <= u <= 1.0 for u in decision.coords) and len(decision.coords) == SPACE.dim
        values = SPACE.decode(decision.coords)
        for param in SPACE.params:
            if param.is_choice:
                assert values[param.name] in param.values
            else:
                assert param.low <= values[param.name] <= param.high
        if me.checkpoint is None:
            assert decision.action == "start" and decision.interval == 0
            continue
        if me.explorer:
            assert (decision.action, decision.coords, decision.checkpoint) == ("continue", me.coords, me.checkpoint)
        if decision.action != "start":
            parent = view.members[decision.parent]
            assert decision.checkpoint == parent.checkpoint and decision.interval == parent.interval
            assert decision.interval >= me.interval, "a lineage went back in training time"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "random"])
def test_the_drawn_populations_make_the_policy_exploit_and_hold_explorers_where_it_has_them(name):
    """So that the guarantees above are checked on exploits and explorers, not only on continues."""
    policy = make_policy(name)
    actions, explorers = set(), 0
    for seed in range(25):
        view = random_population(policy, 8, seed)
        explorers += sum(m.explorer for m in view.members)
        actions |= {policy.decide(view, m.member, SPACE, decision_rng(seed, m.member, m.interval, 0)).action
                    for m in view.members if m.interval < INTERVALS}
    assert {"start", "continue", "exploit"} <= actions
    assert (explorers > 0) == (name in ("romul", "de"))

"""The next claim as a pure function of the population: which member, and the policy's decision.

The worker loop calls it under the lock; the simulator calls the very same function in memory, so a
simulated run and a real one make identical decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hopt_cli.policies import Policy
from hopt_cli.seeds import decision_rng
from hopt_cli.decision import Decision
from hopt_cli.population import Population
from hopt_cli.space import SearchSpace


@dataclass(frozen=True)
class Plan:
    member: int
    decision: Decision
    hparams: dict[str, Any]
    attempt: int
    adopt: bool = False  # an exploit of a finished member: take its lineage over, nothing to train


def plan_next(population: Population, leased: set[int], policy: Policy, space: SearchSpace,
              seed: int) -> Plan | None:
    """Decide for the free member with the fewest intervals; None when every unfinished one is leased."""
    member = population.next_member(leased)
    if member is None:
        return None
    state = population.members[member]
    rng = decision_rng(seed, member, state.interval, state.claims)
    decision = policy.decide(population.view(), member, space, rng)
    adopt = decision.action == "exploit" and decision.interval >= population.intervals
    return Plan(member, decision, space.decode(decision.coords), state.claims, adopt)

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
    # A member's start is one draw however often its first interval is retried (killed, reclaimed, failed),
    # so the initial population is the same as a run that never crashed; later retries may decide anew.
    attempt = state.claims if state.checkpoint is not None else 0
    rng = decision_rng(seed, member, state.interval, attempt)
    decision = policy.decide(population.view(), member, space, rng)
    adopt = decision.action == "exploit" and decision.interval >= population.intervals
    return Plan(member, decision, space.decode(decision.coords), state.claims, adopt)

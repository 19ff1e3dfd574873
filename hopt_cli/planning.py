"""The next claim as a pure function of the population: which member, and the policy's decision.

The worker loop calls it under the lock; the simulator calls the very same function in memory, so a
simulated run and a real one make identical decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hopt_cli.policies import Policy, common
from hopt_cli.seeds import decision_rng
from hopt_cli.decision import Decision
from hopt_cli.population import MemberView, Population, PopulationView
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
    view = population.view()
    decision = policy.decide(view, member, space, rng)
    adopt = decision.action == "exploit" and decision.interval >= population.intervals
    if adopt:
        decision = settle_adoption(view, view.members[member], getattr(policy, "window", 1))
        adopt = decision.action == "exploit"
    return Plan(member, decision, space.decode(decision.coords), state.claims, adopt)


def settle_adoption(view: PopulationView, me: MemberView, window: int) -> Decision:
    """A policy chose a finished parent, ranked at `me`'s training time; but adopting takes its *final* model.

    So only a finished lineage whose final model beats `me`'s current one, both on the robust score (the mean
    of the last `window`: noise) and on the latest score (a lineage that was still decaying), may be adopted:
    the best of those on the final robust score. Otherwise `me` trains on (adopting ends its training).
    """
    mine = _final(me, window)
    better = [p for p in view.members if p.member != me.member and p.interval >= view.intervals and p.scores
              and _final(p, window) > mine and p.scores[-1] > me.scores[-1]]
    if not better:
        return common.keep(me)
    best = max(better, key=lambda p: (_final(p, window), -p.member))
    return common.exploit(me, best, np.array(best.coords), best.sigma)


def _final(member: MemberView, window: int) -> float:
    return member.robust_at(len(member.scores), window)

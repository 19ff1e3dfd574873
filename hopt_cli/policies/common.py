"""Decision building blocks shared by the policies: start, continue, equal-time peers, selection."""
from __future__ import annotations

import math

import numpy as np

from hopt_cli.decision import Decision
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.space import SearchSpace


def start(space: SearchSpace, rng: np.random.Generator, sigma: float = 0.0, explorer: bool = False) -> Decision:
    """A fresh member: coordinates drawn from the recipe's init box."""
    coords = tuple(float(x) for x in space.sample_init(rng))
    return Decision("start", None, None, 0, coords, sigma, 0, explorer)


def keep(me: MemberView) -> Decision:
    """Continue from the member's own checkpoint, unchanged."""
    return Decision("continue", me.member, me.checkpoint, me.interval, me.coords, me.sigma, me.last_change,
                    me.explorer)


def exploit(me: MemberView, parent: MemberView, coords: np.ndarray, sigma: float) -> Decision:
    """Continue from `parent`'s checkpoint with new coordinates; the change happens at `me`'s time."""
    return Decision("exploit", parent.member, parent.checkpoint, parent.interval,
                    tuple(float(x) for x in np.clip(coords, 0.0, 1.0)), sigma, parent.interval, False)


def peers(view: PopulationView, me: MemberView) -> list[MemberView]:
    """The other members with at least one score (comparable at `me`'s training time)."""
    return [p for p in view.members if p.member != me.member and p.scores]


def enough_peers(view: PopulationView, found: list[MemberView]) -> bool:
    return len(found) >= max(2, view.size / 4)


def ranked(members: list[MemberView], score: dict[int, float]) -> list[MemberView]:
    """Best first; ties broken by member index so the order is deterministic."""
    return sorted(members, key=lambda p: (-score[p.member], p.member))


def in_bottom(me: MemberView, members: list[MemberView], score: dict[int, float], quantile: float) -> bool:
    """Whether `me` is among the worst `quantile` of `members` (at least one member is bottom)."""
    order = ranked(members, score)
    bottom = order[len(order) - max(1, math.floor(quantile * len(order))):]
    return any(p.member == me.member for p in bottom)


def top(members: list[MemberView], score: dict[int, float], quantile: float, me: MemberView) -> list[MemberView]:
    """The best `quantile` of `members` that `me` can continue from, best first.

    A parent must not be behind `me` (a lineage never goes back in training time). A finished one may
    be chosen: `me` then takes its lineage over whole instead of training on a worse one of its own.
    """
    order = ranked(members, score)[:max(1, math.floor(quantile * len(members)))]
    return [p for p in order if me.interval <= p.interval and p.member != me.member]

"""The recipe's stop rules judged on the population: whether one is reached, and why, in words.

Pure: the store asks at each claim (`Store.claim_within`, inside the claim's transaction), on the journal's
clock, and journals the reason (a `stop` event) the first time one is reached. After a `hopt extend` resumed a stopped experiment, the rules count from
that extend: the hours from its time, the metric target in the intervals committed after it.
"""
from __future__ import annotations

from collections.abc import Callable

from hopt_cli.population import Population
from hopt_cli.recipe import StopRule

HOUR = 3600.0


def stops(rule: StopRule | None, population: Population, now: float, record: Callable[[str], object]) -> bool:
    """Whether the experiment is stopped: by an earlier stop, or by `rule` at `now` (`record` journals why)."""
    if population.stopped is None:
        reason = reached(rule, population, now)
        if reason is not None:
            record(reason)
    return population.stopped is not None


def reached(rule: StopRule | None, population: Population, now: float) -> str | None:
    """Why the experiment stops at `now` (the journal's clock), or None while no rule is reached."""
    if rule is None:
        return None
    if rule.metric is not None:
        reason = _target(rule, population)
        if reason is not None:
            return reason
    since = population.resumed if population.resumed is not None else population.started
    if rule.hours is not None and since is not None and now - since >= rule.hours * HOUR:
        start = "the extend that resumed it" if population.resumed is not None else "the first claim"
        return f"stop.hours: {_hours(now - since)} since {start} (the limit is {rule.hours:g} h)"
    return None


def _target(rule: StopRule, population: Population) -> str | None:
    """The member whose latest commit (after a resume) meets the metric target; the best one if several do."""
    hits = []
    for member in population.members:
        value = member.metrics.get(str(rule.metric))
        if (member.committed >= population.resumed_event and isinstance(value, (int, float))
                and not isinstance(value, bool) and rule.reached(value)):
            hits.append((value if rule.at_least is not None else -value, member.member))
    if not hits:
        return None
    _, best = max(hits, key=lambda hit: (hit[0], -hit[1]))
    member = population.members[best]
    value = member.metrics[str(rule.metric)]
    return f"stop target {rule.target} reached: member {best} interval {member.interval - 1} has {value:.6g}"


def _hours(seconds: float) -> str:
    return f"{seconds / HOUR:.2f} h"

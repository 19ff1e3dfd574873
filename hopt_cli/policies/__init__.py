"""Search policies: pure, seeded functions from a population view to one member's decision."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from hopt_cli.errors import RecipeError
from hopt_cli.policies.pbt import Pbt
from hopt_cli.policies.random_search import RandomSearch
from hopt_cli.policies.romul import SWITCHES, Romul
from hopt_cli.decision import Decision
from hopt_cli.population import PopulationView
from hopt_cli.space import SearchSpace


class Policy(Protocol):
    """The same inputs always give the same decision: no I/O, no clock, no global RNG."""

    def decide(self, view: PopulationView, member: int, space: SearchSpace,
               rng: np.random.Generator) -> Decision: ...


_FACTORIES: dict[str, tuple[Callable[..., Policy], dict[str, Any]]] = {
    "romul": (Romul, {}),
    "de": (Romul, {"adapt": False, "F": 0.8}),
    "pbt": (Pbt, {}),
    "random": (RandomSearch, {}),
}
NAMES = tuple(_FACTORIES)


def make_policy(name: str, settings: Mapping[str, Any] | None = None) -> Policy:
    """Build a policy from its recipe name and overrides; wrong ones raise RecipeError."""
    if not isinstance(name, str) or name not in _FACTORIES:
        raise RecipeError("policy.name", f"unknown policy {name!r} (choose one of {', '.join(NAMES)})")
    factory, fixed = _FACTORIES[name]
    fields = {f.name: f for f in dataclasses.fields(factory) if f.name not in fixed}
    settings = dict(settings or {})
    for key in [k for k in settings if k in SWITCHES and k in fields]:
        if settings.pop(key) is not fields[key].default:  # a default one: earlier hopt wrote them all
            raise RecipeError(f"policy.{key}", "is an ablation switch of the benchmarks, not a recipe setting; "
                                               "remove it")
    fields = {k: f for k, f in fields.items() if k not in SWITCHES}
    for key, value in settings.items():
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise RecipeError(f"policy.{key}", f"unknown setting for {name} (allowed: {allowed})")
        _check_type(f"policy.{key}", value, fields[key].default)
    return factory(**{**fixed, **settings})


def policy_settings(name: str, policy: Policy) -> dict[str, Any]:
    """Every setting a recipe may give this policy, defaults included (for experiment.yaml and status)."""
    fixed = _FACTORIES[name][1]
    return {k: v for k, v in dataclasses.asdict(policy).items() if k not in fixed and k not in SWITCHES}


def resolve(name: str, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A recipe's policy settings checked and completed with every default: what experiment.yaml holds."""
    return policy_settings(name, make_policy(name, settings))


def robust_window(policy: Policy) -> int:
    """How many of a member's last scores `hopt status` averages into its robust score: those the policy judges
    a member by (its `ready` intervals, or the last one alone), 2 for a policy that judges none (random)."""
    if isinstance(policy, Romul):
        return policy.ready if policy.robust else 1
    return policy.ready if isinstance(policy, Pbt) else 2


_FRACTIONS = {"explorers", "quantile", "resample", "CR"}


def _check_type(key: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool) and value >= 1, "an integer >= 1"
    else:
        high = 1 if key.split(".")[-1] in _FRACTIONS else float("inf")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= high
        want = "a number in [0, 1]" if high == 1 else "a number >= 0"
    if not ok:
        raise RecipeError(key, f"must be {want} (got {value!r})")

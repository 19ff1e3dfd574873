"""PBT (Jaderberg et al. 2017): truncation selection, then perturb by x0.8 / x1.2 or resample."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hopt_cli.policies import common
from hopt_cli.decision import Decision
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.space import Param, SearchSpace


@dataclass(frozen=True)
class Pbt:
    """PBT's settings; `decide` is a pure function of its arguments."""

    ready: int = 2
    quantile: float = 0.2
    resample: float = 0.25
    factor_low: float = 0.8
    factor_high: float = 1.2

    def decide(self, view: PopulationView, member: int, space: SearchSpace, rng: np.random.Generator) -> Decision:
        me = view.members[member]
        if me.checkpoint is None:
            return common.start(space, rng)
        if me.interval - me.last_change < self.ready:
            return common.keep(me)
        found = common.peers(view, me)
        if not common.enough_peers(view, found):
            return common.keep(me)
        everyone = [me, *found]
        fitness = self.fitness(everyone, me.interval)
        if not common.in_bottom(me, everyone, fitness, self.quantile):
            return common.keep(me)
        candidates = common.top(everyone, fitness, self.quantile, me)
        if not candidates:
            return common.keep(me)
        parent = candidates[rng.integers(len(candidates))]
        return common.exploit(me, parent, self.perturb(parent, space, rng), parent.sigma)

    def fitness(self, members: list[MemberView], t: int) -> dict[int, float]:
        """What truncation selection ranks by, higher is better: each member's score at interval `t`."""
        return {p.member: p.score_at(t) for p in members}

    def perturb(self, parent: MemberView, space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
        """PBT's explore step on the parent's hyperparameters, as unit-cube coordinates."""
        values = space.decode(parent.coords)
        coords = [self._perturb_one(p, values[p.name], rng) for p in space.params]
        return np.array(coords, dtype=float)

    def _perturb_one(self, param: Param, value: object, rng: np.random.Generator) -> float:
        if rng.random() < self.resample:
            return param.sample_init(rng)
        if param.is_choice:
            return param.sample_uniform(rng)
        factor = self.factor_low if rng.random() < 0.5 else self.factor_high
        moved = float(value) * factor
        if param.kind == "int":
            step = round(moved) - int(value)
            moved = int(value) + (step if step != 0 else (1 if factor > 1 else -1))
        return param.encode(min(max(moved, param.low), param.high))

"""Random search: hyperparameters drawn once at the start, never changed, nobody copied."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hopt_cli.policies import common
from hopt_cli.decision import Decision
from hopt_cli.population import PopulationView
from hopt_cli.space import SearchSpace


@dataclass(frozen=True)
class RandomSearch:
    """The baseline every other policy must beat."""

    def decide(self, view: PopulationView, member: int, space: SearchSpace, rng: np.random.Generator) -> Decision:
        me = view.members[member]
        return common.start(space, rng) if me.checkpoint is None else common.keep(me)

"""ROMUL as this project reconstructs it (ROMUL.md), and DE, its fixed-step variant.

Explorers guard against short-term winners (the paper's failure mode i); the step size sigma is
inherited and rescaled on every exploit, so the scales that keep producing winners are the ones
that spread (failure mode ii).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hopt_cli.policies import common
from hopt_cli.policies.pbt import Pbt
from hopt_cli.decision import Decision
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.space import SearchSpace

STEP_FACTORS = (0.5, 1.0, 2.0)
# Ablation switches: constructor-only (benchmarks/policies.py builds its variants with them), never recipe settings.
SWITCHES = ("wait", "equal_time", "robust", "rank_select", "adapt", "de_move")


@dataclass(frozen=True)
class Romul:
    """ROMUL's settings; `decide` is a pure function of its arguments."""

    explorers: float = 0.25
    sigma0: float = 0.1
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    ready: int = 2
    quantile: float = 0.375  # tuned from 0.25 (benchmarks/results/tuning-log.md)
    F: float = 0.5
    resample: float = 0.2
    CR: float = 0.3  # tuned from 0.5 (benchmarks/results/tuning-log.md)
    # SWITCHES: turning one off removes its step or puts PBT's in its place.
    wait: bool = True  # step 2: wait `ready` intervals after a change
    equal_time: bool = True  # step 3: peers compared at m's training time (off: at their latest)
    robust: bool = True  # step 4: mean of the last `ready` scores (off: the last score)
    rank_select: bool = True  # step 5 (off: PBT truncation over everyone, parent drawn uniformly)
    adapt: bool = True  # step 6: rescale the inherited sigma (off: sigma stays sigma0)
    de_move: bool = True  # step 7 (off: PBT's x0.8 / x1.2 perturbation or resampling)

    @property
    def window(self) -> int:
        """Intervals the robust score averages (step 4); planning compares finished lineages with it too."""
        return self.ready if self.robust else 1

    def explorer_count(self, size: int) -> int:
        return round(self.explorers * size)

    def decide(self, view: PopulationView, member: int, space: SearchSpace, rng: np.random.Generator) -> Decision:
        me = view.members[member]
        if me.checkpoint is None:
            return common.start(space, rng, self.sigma0, member < self.explorer_count(view.size))
        if me.explorer or (self.wait and me.interval - me.last_change < self.ready):
            return common.keep(me)
        found = common.peers(view, me)
        if not common.enough_peers(view, found):
            return common.keep(me)
        score = {p.member: self._score(p, me.interval) for p in [me, *found]}
        parent = self._select(me, found, score, rng)
        if parent is None:
            return common.keep(me)
        sigma = self._step(parent, rng)
        if not self.de_move:
            return common.exploit(me, parent, Pbt().perturb(parent, space, rng), sigma)
        best = common.ranked(found, score)[0]
        coords = self._move(parent, best, found, sigma, space, rng)
        return common.exploit(me, parent, coords, sigma)

    def _score(self, peer: MemberView, t: int) -> float:
        """Steps 3-4: the lineage's mean over the last `ready` intervals, at training time `t`."""
        at = t if self.equal_time else len(peer.scores)
        return peer.robust_at(at, self.window)

    def _select(self, me: MemberView, found: list[MemberView], score: dict[int, float],
                rng: np.random.Generator) -> MemberView | None:
        """Step 5: the parent `me` continues from if it is in the non-explorers' bottom; None to keep going."""
        everyone = [me, *found]
        rivals = [p for p in everyone if not p.explorer] if self.rank_select else everyone
        if not common.in_bottom(me, rivals, score, self.quantile):
            return None
        candidates = common.top(everyone, score, self.quantile, me)
        if not candidates:
            return None
        index = _rank_weighted(len(candidates), rng) if self.rank_select else int(rng.integers(len(candidates)))
        return candidates[index]

    def _step(self, parent: MemberView, rng: np.random.Generator) -> float:
        if not self.adapt:
            return parent.sigma
        factor = STEP_FACTORS[rng.integers(len(STEP_FACTORS))]
        return float(np.clip(parent.sigma * factor, self.sigma_min, self.sigma_max))

    def _move(self, parent: MemberView, best: MemberView, found: list[MemberView], sigma: float,
              space: SearchSpace, rng: np.random.Generator) -> np.ndarray:
        """Curr-to-best DE mutation with a Gaussian step, a rare global jump, binomial crossover."""
        u_parent = np.array(parent.coords)
        a, b = rng.choice(len(found), size=2, replace=False)
        donor = (u_parent + self.F * (np.array(best.coords) - u_parent)
                 + self.F * (np.array(found[a].coords) - np.array(found[b].coords))
                 + sigma * rng.standard_normal(space.dim))
        if rng.random() < self.resample:
            donor = rng.random(space.dim)
        cross = rng.random(space.dim) < self.CR
        numeric = np.flatnonzero(~space.choice_mask)
        cross[rng.choice(numeric) if numeric.size else rng.integers(space.dim)] = True
        trial = np.where(cross, donor, u_parent)
        choices = space.choice_mask
        resampled = choices & (rng.random(space.dim) < min(1.0, 2 * sigma))
        trial = np.where(choices, u_parent, trial)
        fresh = space.sample_uniform(rng)
        return np.clip(np.where(resampled, fresh, trial), 0.0, 1.0)


def _rank_weighted(count: int, rng: np.random.Generator) -> int:
    """An index into a best-first list, drawn with weights count, count-1, ..., 1."""
    weights = np.arange(count, 0, -1, dtype=float)
    return int(rng.choice(count, p=weights / weights.sum()))

"""Published PBT variants as benchmark peers of ROMUL, re-implemented from their papers' rules (never shipped).

Both are pure policies with hopt's interface, so the family benchmark runs them in the simulator like its own.

- `MfPbt`, Multiple-Frequencies PBT (Doulazmi et al. 2025, arXiv 2506.03225; the rules as in its code,
  github.com/WaelDLZ/MF-PBT, hpo/utils/mf_pbt_genetics.py). The population is split into sub-populations in
  contiguous member blocks; sub-population i evolves every `ready * f_i` intervals, f_1 = 1 < f_2 < ... When
  it evolves, its members are ranked by score and cut in quarters (a share of max(1, n // 4)): the k-th worst
  of the bottom share takes the k-th best's checkpoint and hyperparameters, perturbed by x0.8 or x1.25 per
  hyperparameter (no resampling); each member of the third quarter (ranked 50-75%), best first, is compared
  with the best not yet used agent outside its sub-population and, if that one is better, takes its
  checkpoint (a migrant); with it the migrant's hyperparameters when the migrant comes from a slower
  sub-population, else (from a faster one) the hyperparameters of its own sub-population's best, unperturbed.
  Scaled down: the paper runs 4 sub-populations at f = 1, 10, 25, 50 over 1000 evolution rounds of 24-32
  agents; here a budget of 20-60 intervals gives 10-30 rounds of `ready` = 2, so the slowest period is
  f = 8 (f_i = 8^(i/(M-1)): 1, 2, 4, 8 for M = 4), and M = min(4, N // 4) keeps at least 4 members per
  sub-population (N = 4: one, which is PBT with that exploit and perturbation; N = 8: two, f = 1 and 8).
  Synchronous rounds become training times: a member evolves when its interval is a multiple of its period,
  ranked against the others' scores at that training time (their latest before it if they are behind),
  as hopt's own pbt compares.
- `FirePbt`, a FIRE-style ranking (Dalibard and Jaderberg 2021, arXiv 2109.13800) inside hopt's pbt. FIRE's
  premise: of two networks at similar performance, the one improving faster ends better. Here two members
  are compared on the score range both of their last `span` intervals crossed: the one that crossed it in
  fewer intervals ranks above; with no common range (or equal times), the higher score does. Members are
  ranked by wins over all pairs (ties by score), then pbt's truncation and perturbation apply. Scaled down:
  FIRE's evaluator workers, which train copies with frozen hyperparameters to measure the rate, and its
  hierarchy of sub-populations are left out; they would cost training the other policies do not get.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hopt_cli.decision import Decision
from hopt_cli.policies import common
from hopt_cli.policies.pbt import Pbt
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.space import SearchSpace


@dataclass(frozen=True)
class MfPbt:
    """MF-PBT's settings, scaled to hopt's budgets (the module docstring says how)."""

    ready: int = 2
    slowest: int = 8
    subpopulations: int = 4
    explore: Pbt = field(default_factory=lambda: Pbt(resample=0.0, factor_low=0.8, factor_high=1.25))

    def groups(self, size: int) -> int:
        return max(1, min(self.subpopulations, size // 4))

    def frequencies(self, size: int) -> list[int]:
        """Each sub-population's period in units of `ready`: 1 for the fastest up to `slowest`."""
        count = self.groups(size)
        return [round(self.slowest ** (i / (count - 1))) for i in range(count)] if count > 1 else [1]

    def group(self, member: int, size: int) -> int:
        return member * self.groups(size) // size

    def decide(self, view: PopulationView, member: int, space: SearchSpace, rng: np.random.Generator) -> Decision:
        me = view.members[member]
        if me.checkpoint is None:
            return common.start(space, rng)
        size, t = view.size, me.interval
        frequencies = self.frequencies(size)
        mine = self.group(member, size)
        if t % (self.ready * frequencies[mine]) or t - me.last_change < self.ready:
            return common.keep(me)
        scored = [p for p in view.members if p.scores]
        score = {p.member: p.score_at(t) for p in scored}
        local = common.ranked([p for p in scored if self.group(p.member, size) == mine], score)
        share = max(1, len(local) // 4)
        position = next(i for i, p in enumerate(local) if p.member == member)
        if len(local) >= 2 and position >= len(local) - share:
            parent = local[position - (len(local) - share)]
            if parent.interval < t:
                return common.keep(me)
            return common.exploit(me, parent, self.explore.perturb(parent, space, rng), parent.sigma)
        migrant = self._migrant(me, local[2 * share:3 * share], scored, score, mine, size)
        if migrant is None or migrant.interval < t:
            return common.keep(me)
        slower = frequencies[mine] < frequencies[self.group(migrant.member, size)]
        coords = migrant.coords if slower else local[0].coords
        return common.exploit(me, migrant, np.array(coords), migrant.sigma)

    def _migrant(self, me: MemberView, bracket: list[MemberView], scored: list[MemberView],
                 score: dict[int, float], mine: int, size: int) -> MemberView | None:
        """The outside agent `me` takes in, if any: the bracket, best first, takes the best unused outsiders."""
        outside = common.ranked([p for p in scored if self.group(p.member, size) != mine], score)
        for agent in bracket:
            if outside and score[agent.member] < score[outside[0].member]:
                migrant = outside.pop(0)
                if agent.member == me.member:
                    return migrant
        return None


@dataclass(frozen=True)
class FirePbt(Pbt):
    """pbt ranked FIRE-style, by the pace at which members crossed a common score range."""

    span: int = 4

    def fitness(self, members: list[MemberView], t: int) -> dict[int, float]:
        """Pairwise wins (faster over a common range, else higher), plus the score at `t` scaled into [0, 0.5] to
        break ties: a key for common.ranked, higher is better. Vectorised over pairs: it runs at every decision."""
        curves = [p.scores[max(0, min(t, len(p.scores)) - self.span - 1):min(t, len(p.scores))] for p in members]
        length = max(len(c) for c in curves)
        padded = np.array([c + (c[-1],) * (length - len(c)) for c in curves])  # at the end: no first crossing moves
        first, last = padded[:, 0], padded[:, -1]
        low, high = np.maximum.outer(first, first), np.minimum.outer(last, last)
        took = _reached(padded, high) - _reached(padded, low)  # [i, j]: curve i's intervals over i and j's range
        paced = (high > low) & (took != took.T)
        wins = np.where(paced, took < took.T, last[:, None] > last[None, :]).sum(axis=1)
        spread = last.max() - last.min()
        scaled = 0.5 * (last - last.min()) / spread if spread > 0 else np.zeros(len(members))
        return {p.member: float(w + x) for p, w, x in zip(members, wins, scaled)}


def _reached(curves: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[i, j]: the index of curve i's first score >= levels[i, j] (0 where it never gets there)."""
    return np.argmax(curves[:, None, :] >= levels[:, :, None], axis=2)


PEERS = {"mf-pbt": MfPbt(), "fire-pbt": FirePbt()}

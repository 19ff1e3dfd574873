"""A discrete-event simulation of W asynchronous workers over one population, in memory.

It calls the same `plan_next` the worker loop calls under the lock, applies the same journal events to a
`Population` and runs the real trainable through `run_interval`; only the store is left out. A one-worker
simulation therefore makes exactly the decisions of a real `hopt worker`. Interval durations are random
(lognormal) from a generator of their own, so they never disturb the decisions' seeded generators.
"""
from __future__ import annotations

import heapq
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hopt_cli import events
from hopt_cli.errors import ExperimentFailed
from hopt_cli.events import Adopt, Claim, Commit, JournalEvent
from hopt_cli.planning import Plan, plan_next
from hopt_cli.policies import Policy
from hopt_cli.seeds import trainable_seed
from hopt_cli.population import Population
from hopt_cli.recipe import Recipe
from hopt_cli.store.paths import checkpoint_name
from hopt_cli.trainable import Context, Outcome, load_trainable, run_interval, thread_settings

DURATION_STREAM = 0xD0_2A_71  # keeps the durations' generator apart from every decision's


@dataclass(frozen=True)
class Simulation:
    """A finished simulated experiment: its population and its journal, as the objects its lines would hold
    (`events.encode`; with a simulated `time`)."""

    population: Population
    events: list[dict[str, Any]]

    @property
    def commits(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "commit"]


@dataclass(order=True)
class _Job:
    """An interval in flight: it was trained at claim time and is committed when its duration is over."""

    finish: float
    order: int
    worker: str = field(compare=False)
    token: str = field(compare=False)
    plan: Plan = field(compare=False)
    staging: Path = field(compare=False)
    outcome: Outcome = field(compare=False)


def simulate(recipe: Recipe, workers: int = 1, trainable: Callable[[Context], Any] | None = None,
             spread: float = 0.5, scratch: str | Path | None = None, policy: Policy | None = None) -> Simulation:
    """Run `recipe` to completion with `workers` simulated workers.

    Interval durations are lognormal with median 1 and log-std `spread`; checkpoints live in a temporary
    folder under `scratch` (the system's default when None) that is deleted at the end. `policy` decides
    in place of the recipe's (a benchmark's variant).
    """
    trainable = trainable or load_trainable(recipe.trainable, recipe.command)
    policy = policy or recipe.policy.build()
    with tempfile.TemporaryDirectory(prefix="hopt-sim-", dir=scratch) as root:
        return _Simulator(recipe, policy, trainable, Path(root), spread).run(workers)


class _Simulator:
    def __init__(self, recipe: Recipe, policy: Policy, trainable: Callable[[Context], Any], root: Path,
                 spread: float) -> None:
        self.recipe = recipe
        self.policy = policy
        self.trainable = trainable
        self.checkpoints = root / "checkpoints"
        self.staging = root / "staging"
        self.checkpoints.mkdir()
        self.staging.mkdir()
        self.population = Population(recipe.population, recipe.intervals, recipe.objective.maximize,
                                     recipe.keep_best, recipe.max_failures)
        self.durations = np.random.default_rng([DURATION_STREAM, recipe.seed])
        self.spread = spread
        self.events: list[dict[str, Any]] = []
        self.in_flight: list[_Job] = []
        self.leased: set[int] = set()
        self.on_disk: set[str] = set()
        self.claims = 0
        self.now = 0.0

    def run(self, workers: int) -> Simulation:
        idle = deque(f"sim-{index}" for index in range(workers))
        self._dispatch(idle)
        while self.in_flight:
            job = heapq.heappop(self.in_flight)
            self.now = job.finish
            self._finish(job)
            if self.population.failed:
                raise ExperimentFailed(self.population.failed)
            idle.appendleft(job.worker)
            self._dispatch(idle)
        return Simulation(self.population, self.events)

    def _dispatch(self, idle: deque[str]) -> None:
        """Idle workers claim members until none is free (they wait for the next commit, as real ones poll)."""
        recipe = self.recipe
        while idle:
            plan = plan_next(self.population, self.leased, self.policy, recipe.space, recipe.seed)
            if plan is None:
                return
            if plan.adopt:
                parent = self.population.members[int(plan.decision.parent)]
                self._apply(Adopt(member=plan.member, token=f"{self.claims:08x}", decision=plan.decision,
                                  hparams=parent.hparams, checkpoint=str(parent.checkpoint),
                                  score=parent.lineage.scores[-1], worker=idle[0]))
                self.claims += 1
                continue
            worker = idle.popleft()
            token = f"{self.claims:08x}"
            self.claims += 1
            self._apply(Claim(member=plan.member, token=token, decision=plan.decision, hparams=plan.hparams,
                              attempt=plan.attempt, worker=worker))
            self.leased.add(plan.member)
            staging = self.staging / token
            staging.mkdir()
            outcome = self._train(plan, staging)
            finish = self.now + float(self.durations.lognormal(0.0, self.spread))
            heapq.heappush(self.in_flight, _Job(finish, self.claims, worker, token, plan, staging, outcome))

    def _train(self, plan: Plan, staging: Path) -> Outcome:
        decision, recipe = plan.decision, self.recipe
        ctx = Context(
            hparams=plan.hparams,
            parent=self.checkpoints / decision.checkpoint if decision.checkpoint else None,
            out=staging,
            interval=decision.interval,
            steps=recipe.steps,
            member=plan.member,
            seed=trainable_seed(recipe.seed, plan.member, decision.interval),
        )
        return run_interval(self.trainable, ctx, recipe.objective.metric)

    def _finish(self, job: _Job) -> None:
        plan, outcome = job.plan, job.outcome
        self.leased.discard(plan.member)
        if outcome.error is not None:
            shutil.rmtree(job.staging)
            self._apply(events.fail(plan.member, plan.decision.interval, job.token, outcome.error, job.worker))
            return
        name = checkpoint_name(plan.member, plan.decision.interval, job.token)
        os.rename(job.staging, self.checkpoints / name)
        self.on_disk.add(name)
        self._apply(Commit(member=plan.member, token=job.token, decision=plan.decision, hparams=plan.hparams,
                           checkpoint=name, score=outcome.score, metrics=outcome.metrics, threads=thread_settings(),
                           worker=job.worker))
        self._collect_garbage()

    def _apply(self, event: JournalEvent) -> None:
        """Apply `event` as a worker would read it back from the journal, and record that line's object."""
        data = events.encode(event.at(self.now))
        self.population.apply(events.decode(data))
        self.events.append(data)

    def _collect_garbage(self) -> None:
        """Delete checkpoints nothing references, so disk use stays bounded by the population."""
        unused = self.on_disk - self.population.referenced_checkpoints()
        for name in unused:
            shutil.rmtree(self.checkpoints / name)
        self.on_disk -= unused

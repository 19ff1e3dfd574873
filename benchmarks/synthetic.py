"""Synthetic experiment directories of any size, for measuring hopt where a real run would take weeks.

The journal holds the real event shapes (claim, then commit, as the store writes them), decided by a
cheap stand-in for the policy: the member with the fewest intervals goes next, and now and then it
exploits a better member at least as far along. Every event goes through `Population.apply`, the
snapshot is written by the store's own code one population's worth of events before the end (the
longest tail a reader can meet), and every checkpoint the population references exists.
"""
from __future__ import annotations

import heapq
import json
import random
from dataclasses import dataclass
from pathlib import Path

from hopt_cli import events
from hopt_cli.decision import Decision
from hopt_cli.events import Claim, Commit
from hopt_cli.population import Population
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.store.journal import Cursor
from hopt_cli.store.paths import checkpoint_name
from workers.noop import STATE_FILE

EXPLOIT_RATE = 0.13  # share of decisions that exploit in the no-op benchmark's ROMUL runs
READY = 2  # intervals a member trains with new hyperparameters before it may exploit again
TOURNAMENT = 8  # members sampled when looking for a parent


def synthetic_recipe(population: int, commits: int) -> Recipe:
    """A no-op experiment with a realistic five-parameter space, long enough never to complete."""
    return Recipe.from_dict({
        "name": "synthetic", "seed": 0, "objective": {"metric": "score", "mode": "max"}, "population": population,
        "intervals": 2 * -(-commits // population) + 2, "steps": 1, "policy": {"name": "romul"},
        "worker": "workers.noop:noop", "lease": {"timeout": 300, "heartbeat": 30},
        "space": {"x": {"type": "float", "low": 0.0, "high": 1.0},
                  "lr": {"type": "log", "low": 1.0e-4, "high": 1.0},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.8},
                  "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
                  "augment": {"type": "choice", "values": ["none", "shift", "shift+noise"]}},
    })


@dataclass
class _Member:
    """What the stand-in policy tracks per member."""

    interval: int = 0
    checkpoint: str | None = None
    coords: tuple[float, ...] = ()
    last_change: int = 0
    score: float = 0.0


class _Generator:
    def __init__(self, store: Store, seed: int) -> None:
        self.store = store
        self.recipe = store.recipe
        self.rng = random.Random(seed)
        self.members = [_Member() for _ in range(self.recipe.population)]
        self.queue = [(0, m) for m in range(self.recipe.population)]
        self.time = 1.7e9
        self.count = 0

    def events(self) -> tuple[Claim, Commit]:
        """The claim and commit of the next interval."""
        _, m = heapq.heappop(self.queue)
        me = self.members[m]
        decision = self._decide(m, me)
        hparams = self.store.recipe.space.decode(decision.coords)
        parent_score = self.members[decision.parent].score if decision.parent is not None else 0.0
        score = 0.5 * parent_score + hparams["x"] + self.rng.gauss(0.0, 0.01)  # the better x, the better
        interval = decision.interval
        token = f"{self.count:016x}"
        self.count += 1
        name = checkpoint_name(m, interval, token)
        self.time += 0.005
        claim = Claim(member=m, token=token, decision=decision, hparams=hparams, worker="synthetic", host="node",
                      pid=1, time=round(self.time, 3))
        commit = Commit(member=m, token=token, decision=decision, hparams=hparams, checkpoint=name, score=score,
                        metrics={"score": score}, worker="synthetic", time=round(self.time + 0.002, 3))
        self.members[m] = _Member(interval + 1, name, decision.coords, decision.last_change, score)
        heapq.heappush(self.queue, (interval + 1, m))
        return claim, commit

    def _decide(self, m: int, me: _Member) -> Decision:
        rng = self.rng
        if me.checkpoint is None:
            coords = tuple(rng.random() for _ in range(self.recipe.space.dim))
            return _decision("start", None, None, 0, coords, 0)
        parent = self._parent(me) if me.interval - me.last_change >= READY and rng.random() < EXPLOIT_RATE else None
        if parent is None:
            return _decision("continue", m, me.checkpoint, me.interval, me.coords, me.last_change)
        p = self.members[parent]
        coords = tuple(min(max(c + rng.gauss(0.0, 0.1), 0.0), 1.0) for c in p.coords)
        return _decision("exploit", parent, p.checkpoint, p.interval, coords, p.interval)

    def _parent(self, me: _Member) -> int | None:
        """The best of a few random members that are at least as far along and better."""
        best = None
        for candidate in self.rng.sample(range(len(self.members)), TOURNAMENT):
            c = self.members[candidate]
            if c.checkpoint and me.interval <= c.interval < self.recipe.intervals and c.score > me.score and (
                    best is None or c.score > self.members[best].score):
                best = candidate
        return best


def _decision(action: str, parent: int | None, checkpoint: str | None, interval: int,
              coords: tuple[float, ...], last_change: int) -> Decision:
    return Decision(action, parent, checkpoint, interval, tuple(coords), 0.1, last_change, False)


def generate(root: Path, population: int, commits: int, seed: int = 0) -> Store:
    """Write an experiment with `commits` committed intervals into the new directory `root`."""
    store = Store.create(root, synthetic_recipe(population, commits))
    generator = _Generator(store, seed)
    state = store.population
    snapshot_at = max(0, commits - population // 2)  # a tail of one population's worth of events
    dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    cursor = Cursor()
    with open(store.paths.journal, "ab") as journal:
        for index in range(commits):
            if index == snapshot_at:
                journal.flush()
                store.replica.cursor = cursor
                store.write_snapshot()
            for event in generator.events():
                state.apply(event)
                numbered = {**events.encode(event), "seq": cursor.lines + 1, "prev": cursor.last}
                line = (dumps(numbered) + "\n").encode()
                journal.write(line)
                cursor, _ = cursor.after(line, numbered)
    store.replica.cursor = cursor
    _write_checkpoints(store, state)
    return store


def _write_checkpoints(store: Store, population: Population) -> None:
    """A tiny no-op checkpoint for every one the population references."""
    scores = {m.checkpoint: m.lineage.scores[-1] for m in population.members if m.checkpoint}
    scores.update({b.checkpoint: b.score for b in population.best})
    for name, score in scores.items():
        folder = store.paths.checkpoint(name)
        folder.mkdir()
        (folder / STATE_FILE).write_text(json.dumps({"score": score}))

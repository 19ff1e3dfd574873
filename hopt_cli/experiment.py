"""A read-only Python API over an experiment directory; the CLI's status and best are built on it."""
from __future__ import annotations

import csv
import shutil
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import yaml

from hopt_cli.errors import HoptError
from hopt_cli.population import BestEntry, Lineage
from hopt_cli.store import Store
from hopt_cli.store.fsio import write_atomic


@dataclass(frozen=True)
class LeaseStatus:
    worker: str
    host: str
    pid: int
    age: float
    stale: bool


@dataclass(frozen=True)
class MemberStatus:
    member: int
    interval: int
    score: float | None
    hparams: dict[str, Any]
    sigma: float
    explorer: bool
    failures: int
    last_error: str | None
    lease: LeaseStatus | None


@dataclass(frozen=True)
class BestStatus:
    member: int
    interval: int
    score: float


@dataclass(frozen=True)
class Status:
    name: str
    policy: str
    metric: str
    mode: str
    population: int
    intervals: int
    done: int
    total: int
    complete: bool
    failed: str | None
    best: BestStatus | None
    members: list[MemberStatus]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScheduleStep:
    """One interval along a lineage: who trained it, with which hyperparameters, and its score."""

    interval: int
    member: int
    hparams: dict[str, Any]
    score: float
    copied_from: int | None


@dataclass(frozen=True)
class Best:
    """A kept checkpoint with its whole history, ready to export."""

    member: int
    interval: int
    score: float
    metrics: dict[str, Any]
    checkpoint: Path
    schedule: list[ScheduleStep]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checkpoint": str(self.checkpoint)}


class Experiment:
    """Open an experiment directory for reading: `Experiment("runs/exp1").status()`."""

    def __init__(self, path: str | Path) -> None:
        self.store = Store.open(path)
        self.recipe = self.store.recipe

    def status(self) -> Status:
        population = self.store.sync()
        leases = {info.lease.member: info for info in self.store.lease_infos() if info.lease is not None}
        members = []
        for state in population.members:
            info = leases.get(state.member)
            lease = None if info is None else LeaseStatus(
                info.lease.holder.worker, info.lease.holder.host, info.lease.holder.pid, round(info.age, 1),
                info.age > self.recipe.lease.timeout)
            members.append(MemberStatus(state.member, state.interval,
                                        state.lineage.scores[-1] if state.lineage.scores else None,
                                        state.hparams, state.sigma, state.explorer, state.failures,
                                        state.last_error, lease))
        top = population.best[0] if population.best else None
        r = self.recipe
        return Status(r.name, r.policy_name, r.objective.metric, r.objective.mode, r.population, r.intervals,
                      population.intervals_done, r.population * r.intervals, population.complete,
                      population.failed, None if top is None else BestStatus(top.member, top.interval, top.score),
                      members)

    def best(self) -> Best:
        """The best interval ever committed (among the `keep_best` kept), with its schedule."""
        population = self.store.sync()
        if not population.best:
            raise HoptError(f"{self.store.paths.root}: no interval has been committed yet; "
                            "run workers first (`hopt worker` or `hopt run`)")
        return self._best(population.best[0])

    def _best(self, entry: BestEntry) -> Best:
        return Best(entry.member, entry.interval, entry.score, entry.metrics,
                    self.store.paths.checkpoint(entry.checkpoint), schedule(entry.lineage))

    def export_best(self, out: str | Path) -> Best:
        """Copy the best checkpoint and write its schedule.yaml and scores.csv into `out`."""
        best = self.best()
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            target = out / "checkpoint"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(best.checkpoint, target)
        except OSError as err:
            raise HoptError(f"cannot export to {out}: {err.strerror}; choose an --out you can write to") from None
        write_atomic(out / "schedule.yaml", yaml.safe_dump(_schedule_document(self, best), sort_keys=False).encode())
        write_atomic(out / "scores.csv", _scores_csv(best).encode())
        return best


def schedule(lineage: Lineage) -> list[ScheduleStep]:
    """Expand a lineage's segments to one step per interval."""
    steps = []
    for index, segment in enumerate(lineage.segments):
        end = lineage.segments[index + 1].start if index + 1 < len(lineage.segments) else len(lineage.scores)
        for interval in range(segment.start, end):
            steps.append(ScheduleStep(interval, segment.member, segment.hparams, lineage.scores[interval],
                                      segment.copied_from if interval == segment.start else None))
    return steps


def _schedule_document(experiment: Experiment, best: Best) -> dict[str, Any]:
    r = experiment.recipe
    segments = []
    for step in best.schedule:
        if segments and segments[-1]["hparams"] == step.hparams and segments[-1]["member"] == step.member \
                and step.copied_from is None:
            segments[-1]["intervals"][1] = step.interval + 1
            continue
        segment = {"intervals": [step.interval, step.interval + 1], "member": step.member, "hparams": step.hparams}
        if step.copied_from is not None:
            segment["copied_from"] = step.copied_from
        segments.append(segment)
    return {"experiment": r.name, "worker": r.worker, "command": r.command, "steps": r.steps, "seed": r.seed,
            "objective": {"metric": r.objective.metric, "mode": r.objective.mode},
            "member": best.member, "score": best.score, "intervals": best.interval + 1, "schedule": segments}


def _scores_csv(best: Best) -> str:
    names = list(best.schedule[0].hparams) if best.schedule else []
    lines: list[list[Any]] = [["interval", "member", "score", "copied_from", *names]]
    for step in best.schedule:
        lines.append([step.interval, step.member, step.score, "" if step.copied_from is None else step.copied_from,
                      *(step.hparams[n] for n in names)])
    buffer = StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()

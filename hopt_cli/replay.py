"""Replay: retrain one model from scratch along an exported schedule, with no population and no store.

Each interval gets exactly what the original worker gave it (the span's hyperparameters, the steps,
the seed of the member that trained that interval, the project directory as its working directory, and
the thread settings it ran with, which decide the order of floating-point sums), so a deterministic
trainable reproduces the original score exactly. That is why a Python trainable runs in a child process
started with those settings: a thread count cannot be changed once torch is loaded.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli.errors import ExperimentFailed, HoptError
from hopt_cli.seeds import trainable_seed
from hopt_cli.schedule import Schedule, ScheduleStep, scores_csv
from hopt_cli.store.fsio import write_atomic
from hopt_cli.isolation import IsolatedTrainable
from hopt_cli.trainable import CommandTrainable, Context, environment_with, load_trainable, never, run_interval


@dataclass(frozen=True)
class ReplayResult:
    """What a replay produced: its scores by interval, against the schedule's original final score."""

    scores: list[float]
    original: float
    intervals: int
    stopped: bool
    checkpoint: Path | None

    @property
    def score(self) -> float | None:
        return self.scores[-1] if self.scores else None


class Trainables:
    """The schedule's trainable once per thread setting, each running in `project` with exactly that setting."""

    def __init__(self, plan: Schedule, project: str | None) -> None:
        load_trainable(plan.trainable, plan.command, project)  # an import error is the user's to fix: say it now
        self.plan = plan
        self.project = project
        self._made: dict[str, Callable[[Context], Any]] = {}

    def get(self, threads: dict[str, str] | None) -> Callable[[Context], Any]:
        key = json.dumps(threads, sort_keys=True)
        if key not in self._made:
            env = environment_with(threads)
            if self.plan.command is not None:
                self._made[key] = CommandTrainable(self.plan.command, cwd=self.project, env=env)
            else:
                self._made[key] = IsolatedTrainable(str(self.plan.trainable), math.inf, self.project, env)
        return self._made[key]

    def close(self) -> None:
        for trainable in self._made.values():
            if isinstance(trainable, IsolatedTrainable):
                trainable.close()


def replay(plan: Schedule, out: str | Path, stop: Callable[[], bool] = never,
           progress: Callable[[int, float], None] | None = None, project: str | None = None) -> ReplayResult:
    """Train `plan` interval by interval into `out` (checkpoint/, scores.csv); `stop` ends it cleanly.

    The trainable runs in `project` (default: the one the schedule names)."""
    out = Path(out).absolute()
    trainables = Trainables(plan, project or plan.project)
    try:
        return _replay(plan, out, stop, progress, trainables)
    finally:
        trainables.close()


def _replay(plan: Schedule, out: Path, stop: Callable[[], bool], progress: Callable[[int, float], None] | None,
            trainables: Trainables) -> ReplayResult:
    work = out / "work"
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    except OSError as err:
        raise HoptError(f"cannot replay into {out}: {err.strerror}; choose a --dir you can write to") from None
    done: list[ScheduleStep] = []
    parent: Path | None = None
    for interval in range(plan.intervals):
        span = plan.at(interval)
        folder = work / f"interval-{interval:05d}"
        folder.mkdir()
        ctx = Context(span.hparams, parent, folder, interval, plan.steps, span.member,
                      trainable_seed(plan.seed, span.member, interval), should_stop=stop)
        outcome = run_interval(trainables.get(span.threads), ctx, plan.metric) if not stop() else None
        if outcome is None or stop():
            break
        if outcome.error is not None:
            raise ExperimentFailed(f"replay: interval {interval} (member {span.member}'s seed) failed: {outcome.error}")
        if parent is not None:
            shutil.rmtree(parent)
        parent = folder
        done.append(ScheduleStep(interval, span.member, span.hparams, outcome.score,
                                 span.copied_from if interval == span.start else None, span.threads))
        if progress is not None:
            progress(interval, outcome.score)
    checkpoint = _publish(parent, out)
    shutil.rmtree(work)
    write_atomic(out / "scores.csv", scores_csv(done).encode())
    return ReplayResult([s.score for s in done], plan.score, plan.intervals, len(done) < plan.intervals, checkpoint)


def _publish(last: Path | None, out: Path) -> Path | None:
    """Move the last completed interval's folder to `out`/checkpoint."""
    if last is None:
        return None
    target = out / "checkpoint"
    shutil.rmtree(target, ignore_errors=True)
    last.rename(target)
    return target

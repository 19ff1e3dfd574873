"""Replay: retrain one model from scratch along an exported schedule, with no population and no store.

`hopt replay` and, from Python, `hopt_cli.replay()`. Each interval gets exactly what the original
worker gave it (the span's hyperparameters, the steps, the seed of the member that trained that
interval, the project directory as its working directory, and the thread settings it ran with, which
decide the order of floating-point sums), so a deterministic trainable reproduces the original score
exactly. That is why a Python trainable runs in a child process started with those settings: a thread
count cannot be changed once torch is loaded. A trainable given as a callable (one that was given to
`hopt_cli.run()` from a script or notebook) reaches that child pickled by value, as it reached the workers.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli.errors import ExperimentFailed, HoptError
from hopt_cli.isolation import IsolatedTrainable
from hopt_cli.schedule import Schedule, ScheduleStep, load, scores_csv
from hopt_cli.seeds import trainable_seed
from hopt_cli.store.fsio import write_atomic
from hopt_cli.trainable import CommandTrainable, Context, environment_with, load_trainable, never, run_interval

ScheduleSource = str | os.PathLike | Schedule
Trainable = Callable[[Context], Any]


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
    """The trainable (the schedule's, or `function` in its place) once per thread setting, each running in
    `project` with exactly that setting."""

    def __init__(self, plan: Schedule, project: str | None, function: Trainable | None) -> None:
        self.plan = plan
        self.project = project
        self.function = function
        self._made: dict[str, Callable[[Context], Any]] = {}

    def get(self, threads: dict[str, str] | None) -> Callable[[Context], Any]:
        key = json.dumps(threads, sort_keys=True)
        if key not in self._made:
            env = environment_with(threads)
            if self.function is None and self.plan.command is not None:
                self._made[key] = CommandTrainable(self.plan.command, cwd=self.project, env=env)
            else:
                self._made[key] = IsolatedTrainable(self.function or str(self.plan.trainable), math.inf, self.project,
                                                    env)
        return self._made[key]

    def close(self) -> None:
        for trainable in self._made.values():
            if isinstance(trainable, IsolatedTrainable):
                trainable.close()


def replay(schedule: ScheduleSource, dir: str | os.PathLike, trainable: Trainable | None = None,
           stop: Callable[[], bool] = never, progress: Callable[[int, float], None] | None = None,
           project: str | None = None) -> ReplayResult:
    """Retrain the model of `schedule` (the path of a schedule.yaml that `hopt best --out` wrote, or a
    loaded Schedule) from scratch into `dir` (checkpoint/, scores.csv), and compare its score.

    `trainable` (any callable taking a Context) replaces the schedule's, as in `hopt_cli.run()`: a
    trainable that was defined in a script or notebook must be given again. It runs in `project`
    (default: the one the schedule names). `stop` ends the replay cleanly after an interval; `progress`
    is called with each interval done and its score."""
    plan = schedule if isinstance(schedule, Schedule) else load(schedule)
    project = project or plan.project
    if trainable is None:
        check_trainable(plan, schedule, dir, project)
    trainables = Trainables(plan, project, trainable)
    try:
        return _replay(plan, Path(dir).absolute(), stop, progress, trainables)
    finally:
        trainables.close()


def check_trainable(plan: Schedule, schedule: ScheduleSource, dir: str | os.PathLike, project: str | None) -> None:
    """Raise HoptError unless the schedule's trainable loads in `project`; one defined in a script or
    notebook (`__main__:name`) cannot, and the message says how to replay it from Python instead."""
    module, _, name = str(plan.trainable).partition(":")
    if plan.command is None and module == "__main__":
        source = "SCHEDULE" if isinstance(schedule, Schedule) else repr(str(schedule))
        raise HoptError(f"worker: {plan.trainable} was defined in a script or notebook and given to hopt_cli.run(); "
                        f"replay it from Python with the same function: hopt_cli.replay({source}, {str(dir)!r}, "
                        f"trainable={name})")
    load_trainable(plan.trainable, plan.command, project)


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

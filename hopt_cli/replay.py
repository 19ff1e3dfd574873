"""Replay: retrain one model from scratch along an exported schedule, with no population and no store.

Each interval gets exactly what the original worker gave it (the span's hyperparameters, the steps,
and the seed of the member that trained that interval), so a deterministic trainable reproduces the
original score exactly.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.errors import ExperimentFailed, HoptError
from hopt_cli.policies import trainable_seed
from hopt_cli.schedule import Schedule, ScheduleStep, scores_csv
from hopt_cli.store.fsio import write_atomic
from hopt_cli.trainable import Context, load_trainable, run_interval


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


def _never() -> bool:
    return False


def replay(plan: Schedule, out: str | Path, stop: Callable[[], bool] = _never,
           progress: Callable[[int, float], None] | None = None) -> ReplayResult:
    """Train `plan` interval by interval into `out` (checkpoint/, scores.csv); `stop` ends it cleanly."""
    trainable = load_trainable(plan.worker, plan.command)
    out = Path(out)
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
        outcome = run_interval(trainable, ctx, plan.metric) if not stop() else None
        if outcome is None or stop():
            break
        if outcome.error is not None:
            raise ExperimentFailed(f"replay: interval {interval} (member {span.member}'s seed) failed: {outcome.error}")
        if parent is not None:
            shutil.rmtree(parent)
        parent = folder
        done.append(ScheduleStep(interval, span.member, span.hparams, outcome.score,
                                 span.copied_from if interval == span.start else None))
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

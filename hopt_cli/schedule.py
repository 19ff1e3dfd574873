"""schedule.yaml: a lineage's hyperparameters interval by interval, written by `hopt best`, read by replay.

The file holds everything a replay needs (the trainable, steps, seed, objective, and per segment of
intervals the hyperparameters and the member that trained them, whose seed the trainable got), so a
model can be retrained from scratch without the experiment directory.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import yaml

from hopt_cli.errors import HoptError
from hopt_cli.population import Lineage
from hopt_cli.recipe import Recipe

FORMAT = 1


@dataclass(frozen=True)
class ScheduleStep:
    """One interval along a lineage: who trained it, with which hyperparameters, and its score."""

    interval: int
    member: int
    hparams: dict[str, Any]
    score: float
    copied_from: int | None


@dataclass(frozen=True)
class Span:
    """Intervals [start, end) trained by one member with one hyperparameter setting."""

    start: int
    end: int
    member: int
    hparams: dict[str, Any]
    copied_from: int | None = None


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule.yaml."""

    worker: str | None
    command: str | None
    steps: int
    seed: int
    metric: str
    mode: str
    member: int
    score: float
    spans: tuple[Span, ...]

    @property
    def intervals(self) -> int:
        return self.spans[-1].end

    def at(self, interval: int) -> Span:
        """The span that trained `interval`."""
        return next(s for s in self.spans if s.start <= interval < s.end)


def steps(lineage: Lineage) -> list[ScheduleStep]:
    """Expand a lineage's segments to one step per interval."""
    expanded = []
    for index, segment in enumerate(lineage.segments):
        end = lineage.segments[index + 1].start if index + 1 < len(lineage.segments) else len(lineage.scores)
        for interval in range(segment.start, end):
            expanded.append(ScheduleStep(interval, segment.member, segment.hparams, lineage.scores[interval],
                                         segment.copied_from if interval == segment.start else None))
    return expanded


def spans(schedule: list[ScheduleStep]) -> list[Span]:
    """Merge consecutive steps of one member with the same hyperparameters (an exploit always splits)."""
    merged: list[Span] = []
    for step in schedule:
        last = merged[-1] if merged else None
        if last and (last.member, last.hparams) == (step.member, step.hparams) and step.copied_from is None:
            merged[-1] = Span(last.start, step.interval + 1, last.member, last.hparams, last.copied_from)
        else:
            merged.append(Span(step.interval, step.interval + 1, step.member, step.hparams, step.copied_from))
    return merged


def document(recipe: Recipe, member: int, score: float, schedule: list[ScheduleStep]) -> dict[str, Any]:
    """The schedule.yaml content for a lineage ending in `member`'s checkpoint with `score`."""
    segments = []
    for span in spans(schedule):
        segment: dict[str, Any] = {"intervals": [span.start, span.end], "member": span.member}
        if span.copied_from is not None:
            segment["copied_from"] = span.copied_from
        segments.append({**segment, "hparams": span.hparams})
    trainable = {"worker": recipe.worker} if recipe.worker else {"command": recipe.command}
    return {"hopt_schedule": FORMAT, "experiment": recipe.name, **trainable, "steps": recipe.steps,
            "seed": recipe.seed, "objective": {"metric": recipe.objective.metric, "mode": recipe.objective.mode},
            "member": member, "score": score, "intervals": len(schedule), "schedule": segments}


def scores_csv(schedule: list[ScheduleStep]) -> str:
    """One row per interval of a lineage: who trained it, its score, where it was copied from, hparams."""
    names = list(schedule[0].hparams) if schedule else []
    rows: list[list[Any]] = [["interval", "member", "score", "copied_from", *names]]
    for step in schedule:
        rows.append([step.interval, step.member, step.score, "" if step.copied_from is None else step.copied_from,
                     *(step.hparams[n] for n in names)])
    buffer = StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def load(path: str | Path) -> Schedule:
    """Read and check a schedule.yaml; anything that is not a hopt schedule is one HoptError line."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise HoptError(f"cannot read {path}: {err.strerror}; give the schedule.yaml that `hopt best --out` "
                        "wrote") from None
    except yaml.YAMLError:
        data = None
    if not isinstance(data, Mapping) or data.get("hopt_schedule") != FORMAT:
        raise HoptError(f"{path} is not a hopt schedule (format {FORMAT}); export one with "
                        "`hopt best --dir D --out DIR`")
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError) as err:
        raise HoptError(f"{path}: broken schedule ({err}); export it again with `hopt best --dir D --out DIR`") \
            from None


def _parse(data: Mapping[str, Any]) -> Schedule:
    parsed = []
    for segment in data["schedule"]:
        start, end = (int(i) for i in segment["intervals"])
        expected = parsed[-1].end if parsed else 0
        if start != expected or end <= start:
            raise ValueError(f"segment [{start}, {end}) does not follow interval {expected}")
        if not isinstance(segment["hparams"], Mapping):
            raise TypeError(f"hparams of segment [{start}, {end}) is not a mapping")
        parsed.append(Span(start, end, int(segment["member"]), dict(segment["hparams"]), segment.get("copied_from")))
    if not parsed:
        raise ValueError("no segments")
    if ("worker" in data) == ("command" in data):
        raise ValueError("give exactly one of worker and command")
    objective = data["objective"]
    return Schedule(data.get("worker"), data.get("command"), int(data["steps"]), int(data["seed"]),
                    str(objective["metric"]), str(objective["mode"]), int(data["member"]), float(data["score"]),
                    tuple(parsed))

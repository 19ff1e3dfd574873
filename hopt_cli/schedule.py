"""schedule.yaml: a lineage's hyperparameters interval by interval, written by `hopt best`, read by replay.

The file holds everything a replay needs (the trainable and the project directory it ran in, steps,
seed, objective, and per segment of intervals the hyperparameters, the member that trained them, whose
seed the trainable got, and the thread settings it ran with), so a model can be retrained from scratch
without the experiment directory.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, replace
from io import StringIO
from pathlib import Path
from typing import Any

import yaml

from hopt_cli.errors import HoptError
from hopt_cli.population import Lineage
from hopt_cli.recipe import Recipe
from hopt_cli.trainable import THREAD_VARIABLES

FORMAT = 1


@dataclass(frozen=True)
class ScheduleStep:
    """One interval along a lineage: who trained it, with which hyperparameters, and its score."""

    interval: int
    member: int
    hparams: dict[str, Any]
    score: float
    copied_from: int | None
    threads: dict[str, str] | None = None


@dataclass(frozen=True)
class Span:
    """Intervals [start, end) trained by one member with one hyperparameter and thread setting."""

    start: int
    end: int
    member: int
    hparams: dict[str, Any]
    copied_from: int | None = None
    threads: dict[str, str] | None = None  # None: not recorded (the replay runs with ours)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule.yaml."""

    trainable: str | None  # module:function (the recipe's `worker`), or None with `command`
    command: str | None
    project: str | None
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
                                         segment.copied_from if interval == segment.start else None,
                                         segment.threads))
    return expanded


def spans(schedule: list[ScheduleStep]) -> list[Span]:
    """Merge consecutive steps of one member with the same hyperparameters and threads (an exploit
    always splits)."""
    merged: list[Span] = []
    for step in schedule:
        last = merged[-1] if merged else None
        if (last and (last.member, last.hparams, last.threads) == (step.member, step.hparams, step.threads)
                and step.copied_from is None):
            merged[-1] = replace(last, end=step.interval + 1)
        else:
            merged.append(Span(step.interval, step.interval + 1, step.member, step.hparams, step.copied_from,
                               step.threads))
    return merged


def document(recipe: Recipe, member: int, score: float, schedule: list[ScheduleStep]) -> dict[str, Any]:
    """The schedule.yaml content for a lineage ending in `member`'s checkpoint with `score`.

    The first segment's thread settings are written once at the top; a segment that ran with others
    says so itself."""
    merged = spans(schedule)
    threads = merged[0].threads if merged else None
    segments = []
    for span in merged:
        segment: dict[str, Any] = {"intervals": [span.start, span.end], "member": span.member}
        if span.copied_from is not None:
            segment["copied_from"] = span.copied_from
        if span.threads != threads:
            segment["threads"] = span.threads
        segments.append({**segment, "hparams": span.hparams})
    trainable = {"worker": recipe.trainable} if recipe.trainable else {"command": recipe.command}
    where = {"project": recipe.project} if recipe.project else {}
    ran_with = {"threads": threads} if threads is not None else {}
    return {"hopt_schedule": FORMAT, "experiment": recipe.name, **trainable, **where, **ran_with,
            "steps": recipe.steps, "seed": recipe.seed,
            "objective": {"metric": recipe.objective.metric, "mode": recipe.objective.mode},
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
    threads = _threads(data.get("threads"))
    for segment in data["schedule"]:
        start, end = (int(i) for i in segment["intervals"])
        expected = parsed[-1].end if parsed else 0
        if start != expected or end <= start:
            raise ValueError(f"segment [{start}, {end}) does not follow interval {expected}")
        if not isinstance(segment["hparams"], Mapping):
            raise TypeError(f"hparams of segment [{start}, {end}) is not a mapping")
        parsed.append(Span(start, end, int(segment["member"]), dict(segment["hparams"]), segment.get("copied_from"),
                           _threads(segment["threads"]) if "threads" in segment else threads))
    if not parsed:
        raise ValueError("no segments")
    if ("worker" in data) == ("command" in data):
        raise ValueError("give exactly one of worker and command")
    objective = data["objective"]
    project = data.get("project")
    if project is not None and not isinstance(project, str):
        raise TypeError(f"project is not a path (got {project!r})")
    return Schedule(data.get("worker"), data.get("command"), project, int(data["steps"]), int(data["seed"]),
                    str(objective["metric"]), str(objective["mode"]), int(data["member"]), float(data["score"]),
                    tuple(parsed))


def _threads(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - set(THREAD_VARIABLES):
        raise ValueError(f"threads must map some of {', '.join(THREAD_VARIABLES)} to values (got {value!r})")
    return {str(k): str(v) for k, v in value.items()}

"""What the tracker exports (`hopt mlflow`, `hopt wandb`) log: the journal's commits as points of member
runs, with each exploit's parent and mutation, read from `Experiment.timeline()`.

The mapping is pure and the same for every tracker; an exporter only writes it. Its cursor is the number of
commits it has logged: the history only grows (in journal order), so the points past it are the new ones.
"""
from __future__ import annotations

import importlib
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli.errors import HoptError
from hopt_cli.experiment import Best, Experiment
from hopt_cli.space import SearchSpace
from hopt_cli.timeline import Replayed, TrainedInterval

WATCH_SECONDS = 10.0  # how often --watch reads the journal again


@dataclass(frozen=True)
class Exploit:
    """An exploit: the member whose checkpoint was copied, and a line naming it and the mutation."""

    parent: int
    text: str


@dataclass(frozen=True)
class Point:
    """One commit as a tracker logs it, at step = interval: `values` holds `score`, `metrics/<name>` for
    each numeric metric and `hparams/<name>` for each hyperparameter (a choice as its index)."""

    member: int
    interval: int
    time: float
    values: dict[str, float]
    exploit: Exploit | None


def points(replayed: Iterable[Replayed], space: SearchSpace) -> list[Point]:
    """Every commit as a Point, in journal order."""
    choices = {p.name: p.values for p in space.params if p.is_choice}
    return [Point(r.trained.member, r.trained.interval, r.trained.time, values(r.trained, choices),
                  Exploit(int(r.trained.parent), exploit_text(r)) if r.trained.action == "exploit" else None)
            for r in replayed if r.trained is not None]


def start_hparams(commits: Iterable[TrainedInterval]) -> dict[int, dict[str, Any]]:
    """Each member's hyperparameters at its first commit: the params its run starts with."""
    first: dict[int, dict[str, Any]] = {}
    for c in commits:
        first.setdefault(c.member, c.hparams)
    return first


def run_name(member: int) -> str:
    return f"m{member:03d}"


def values(c: TrainedInterval, choices: dict[str, tuple[Any, ...]]) -> dict[str, float]:
    """A commit's numbers as trackers plot them: its score, numeric metrics and hyperparameters (a choice
    as its index), and the step size that made it when it has one."""
    values = {"score": float(c.score)}
    values.update({f"metrics/{k}": float(v) for k, v in c.metrics.items() if _is_number(v)})
    for name, value in c.hparams.items():
        if name in choices and value in choices[name]:
            values[f"hparams/{name}"] = float(choices[name].index(value))
        elif _is_number(value):
            values[f"hparams/{name}"] = float(value)
    if c.sigma > 0:
        values["pbt/sigma"] = float(c.sigma)
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def exploit_text(r: Replayed) -> str:
    """An exploit's commit in words: `interval 7: copied member 2's checkpoint of interval 6 (score 0.91);
    lr 0.01 -> 0.012`."""
    c, copied = r.trained, r.copied
    assert c is not None  # an exploit's commit
    if copied is None:
        return f"interval {c.interval}: copied member {c.parent}'s checkpoint {c.parent_checkpoint}"
    changes = ", ".join(f"{ch.name} {_fmt(ch.old)} -> {_fmt(ch.new)}" for ch in r.entry.changes)
    return (f"interval {c.interval}: copied member {c.parent}'s checkpoint of interval {copied.interval} "
            f"(score {copied.score:.6g}); {changes or 'no change'}")


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


@contextmanager
def exported_best(experiment: Experiment) -> Iterator[tuple[Best, list[Path]]]:
    """The best interval exported into a temporary folder outside the experiment, for a tracker to upload:
    its `checkpoint` folder, `schedule.yaml` and `scores.csv` (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="hopt-best-") as folder:
        out = Path(folder) / "best"
        best = experiment.export_best(out)
        yield best, [out / "checkpoint", out / "schedule.yaml", out / "scores.csv"]


def follow(export: Callable[[], bool], watch: bool) -> None:
    """Run `export` (which says whether the experiment has ended) once, or with `watch` until it has ended."""
    while not export() and watch:
        time.sleep(WATCH_SECONDS)


def require(package: str, command: str, extra: str) -> Any:
    """Import a tracker's package, or say in one line how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise HoptError(f"{command} needs {package}: pip install {package} (or, in hopt's folder, "
                        f"pip install -e '.[{extra}]')") from None

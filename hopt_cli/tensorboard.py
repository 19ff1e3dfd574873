"""`hopt tensorboard`: an experiment's journal as TensorBoard event files (the optional extra `tensorboard`).

OUT holds one run per member (`m000`, `m001`, ...), found in the journal's events, so members added
mid-experiment get runs of their own. Step = interval index, wall time = when the journal recorded it.
Each committed interval writes `score` (the objective), `metrics/<name>` for every numeric metric,
`hparams/<name>` for every hyperparameter (a choice as its index in the space's values, as `hopt plot`
draws it; the exploit text names the values) and `pbt/sigma` (the step size, when the policy has one).

Lineage: an exploit at interval i resumed the parent's checkpoint of interval i-1, so the member's run
gets that checkpoint's point (the parent's score, metrics and hyperparameters, at the parent's step)
just before its own point at i: the curve runs into the parent's and goes on from there. Where the
member already had points at that step or later, TensorBoard's default loader takes the repeated step
for a restart and keeps the newer points, so the run shows the history of the model the member now holds
(`--load_fast=false` keeps both and draws the jump as a vertical line). At step i, `pbt/exploit_from`
is the parent member and the text `pbt/exploit` says what was copied and mutated. An adopt (a member
takes over a finished lineage whole) writes the parent's last point, `pbt/adopted_from` and a text
`pbt/adopted` into the member's run at the parent's last step.

Exporting again appends only what the journal gained: OUT/.hopt-tensorboard.json records the journal
position consumed and the points later exploits and adopts copy, and each run that gets points gets a
new events file, `events.out.tfevents.<n>.hopt` with n one more than the run's last (TensorBoard reads
a run's files in name order, so they must sort in the order written; its own writer names them by the
second and the pid, which does not). A file is written whole under a temporary name, then renamed, so
a TensorBoard watching OUT never reads half of one. The state is saved after the event files: a crash
in between makes the next export write some points again, which the default loader shows once (a
repeated step replaces). Written with tensorboard's own record writer (no TensorFlow, no torch).
The experiment is only read.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli.errors import HoptError
from hopt_cli.events import Adopt, Claim, Commit, JournalEvent
from hopt_cli.experiment import refuse_inside_experiment
from hopt_cli.space import SearchSpace
from hopt_cli.store import Store
from hopt_cli.store.fsio import fsync_dir, write_json_atomic
from hopt_cli.store.journal import Cursor

STATE = ".hopt-tensorboard.json"
FORMAT = 1  # of the state file
EVENTS = re.compile(r"events\.out\.tfevents\.(\d{10})\.hopt")  # the event files we write, numbered from 1
Point = dict[str, Any]  # a checkpoint as the runs show it: interval, checkpoint, hparams, scalars (by tag)


@dataclass(frozen=True)
class TensorboardExport:
    """What one export did: `points` new points (one step of one run) in the runs `updated`, from
    `events` journal events not read before; `runs` are all the runs in `out`."""

    out: Path
    runs: tuple[str, ...]
    updated: tuple[str, ...]
    points: int
    events: int


def export(root: str | Path, out: str | Path) -> TensorboardExport:
    """Append the journal's events since the last export of `root` into `out` as TensorBoard runs."""
    _check_tensorboard()
    store = Store.open(root)
    out = Path(out)
    state = _load_state(out, store)
    complete = store.sync().complete  # before the events: a complete experiment's are then all read
    found, cursor = store.read_events(Cursor(**state["cursor"]))
    runs = _Runs()
    _Exporter(state, store.recipe.space, runs).apply(found)
    if complete and not state.get("sessions"):
        runs.sessions(state["members"])
        state["sessions"] = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        runs.publish(out)
        write_json_atomic(out / STATE, {**state, "cursor": cursor.to_dict()})
    except OSError as err:
        raise HoptError(f"cannot write to {out}: {err.strerror or err}; choose an --out you can write to, "
                        "with room for the event files") from None
    return TensorboardExport(out, tuple(sorted(_run(int(m)) for m in state["members"])), tuple(sorted(runs.files)),
                             runs.points, len(found))


def _check_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise HoptError("hopt tensorboard needs tensorboard: pip install 'tensorboard>=2.14' (or, in hopt's folder, "
                        "pip install -e '.[tensorboard]')")


def _run(member: int) -> str:
    return f"m{member:03d}"


def _load_state(out: Path, store: Store) -> dict[str, Any]:
    """The state of `out`'s last export, checked to belong to this experiment; a fresh one if none.

    An `out` inside an experiment directory, or not empty without a state file, is refused: the export
    would write among files that are not its own."""
    root, head = store.paths.root, store.journal.head()
    refuse_inside_experiment(out)
    fresh = {"format": FORMAT, "experiment": str(Path(root).resolve()), "head": head,
             "cursor": Cursor().to_dict(), "members": {}, "claimed": {}}
    path = out / STATE
    try:
        state = json.loads(path.read_bytes())
        Cursor(**state["cursor"])
        if state["format"] != FORMAT:
            raise ValueError(f"format {state['format']}, this hopt reads {FORMAT}")
    except FileNotFoundError:
        if out.is_dir() and any(out.iterdir()):
            raise HoptError(f"--out {out} is not empty and holds no export of `hopt tensorboard` ({STATE}); "
                            "choose a new or empty folder") from None
        return fresh
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise HoptError(f"{path}: not a state file of `hopt tensorboard` ({err}); export into a new --out, "
                        f"or delete {out}") from None
    if state["head"] is not None and state["head"] != head:
        raise HoptError(f"{out} holds the TensorBoard export of another experiment ({state['experiment']}), not "
                        f"of {root}; export into a new --out, or delete {out}")
    size = store.paths.journal.stat().st_size
    if size < state["cursor"]["offset"]:
        raise HoptError(f"{store.paths.journal} is shorter than {out} has exported ({size} < "
                        f"{state['cursor']['offset']} bytes): the journal was cut or replaced; export into a new --out")
    return {**state, "experiment": fresh["experiment"], "head": head}


class _Runs:
    """The new events of each run, held in memory until `publish` writes each run's as one new file."""

    def __init__(self) -> None:
        self.files: dict[str, io.BytesIO] = {}  # run -> its new records
        self.points = 0

    def _write(self, member: int, step: int, values: list[Any], wall_time: float | None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        run = _run(member)
        records = RecordWriter(self.files.setdefault(run, io.BytesIO()))
        if not self.files[run].tell():  # a new file begins with its version
            records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        event = Event(wall_time=time.time() if wall_time is None else wall_time, step=step,
                      summary=Summary(value=values))
        records.write(event.SerializeToString())

    def point(self, member: int, point: Point, wall_time: float | None) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in point["scalars"].items()]
        self._write(member, point["interval"], values, wall_time)
        self.points += 1

    def note(self, member: int, step: int, name: str, parent: int, text: str, wall_time: float | None) -> None:
        """Annotate `step` of the member's run: the scalar `pbt/<name>_from` and the text `pbt/<name>`."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb

        values = [Summary.Value(tag=f"pbt/{name}_from", simple_value=parent), *text_pb(f"pbt/{name}", text).value]
        self._write(member, step, values, wall_time)

    def sessions(self, members: dict[str, Point]) -> None:
        """The HParams view, written once the experiment is complete (TensorBoard keeps a run's first
        session only): each member a session of its latest interval's hyperparameters, beside its score."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        for member, point in members.items():
            hparams = {k: v for k, v in point["hparams"].items() if isinstance(v, (bool, int, float, str))}
            self._write(int(member), point["interval"], list(hparams_pb(hparams, trial_id=_run(int(member))).value),
                        None)

    def publish(self, out: Path) -> None:
        """Write each run's events as its next file, whole under a name TensorBoard ignores, then renamed."""
        for run, records in self.files.items():
            folder = out / run
            folder.mkdir(exist_ok=True)
            numbers = [int(m[1]) for m in map(EVENTS.fullmatch, os.listdir(folder)) if m]
            temp = folder / f".hopt-{secrets.token_hex(4)}.tmp"
            try:
                with open(temp, "wb") as handle:
                    handle.write(records.getvalue())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, folder / f"events.out.tfevents.{max(numbers, default=0) + 1:010d}.hopt")
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            fsync_dir(folder)


class _Exporter:
    """Applies journal events to the runs; `state` keeps, per member, its latest point (`members`) and
    the point an open exploit claim resumes (`claimed`: its parent may commit again before it does)."""

    def __init__(self, state: dict[str, Any], space: SearchSpace, runs: _Runs) -> None:
        self.members: dict[str, Point] = state["members"]
        self.claimed: dict[str, Point] = state["claimed"]
        self.choices = {p.name: p.values for p in space.params if p.is_choice}
        self.runs = runs

    def apply(self, found: Iterable[JournalEvent]) -> None:
        for event in found:
            if isinstance(event, Claim):
                self._claim(event)
            elif isinstance(event, Commit):
                self._commit(event)
            elif isinstance(event, Adopt):
                self._adopt(event)

    def _copied(self, parent: int | None, checkpoint: str | None) -> Point | None:
        """The parent's latest point, if it is the checkpoint named."""
        point = self.members.get(str(parent))
        return point if point is not None and point["checkpoint"] == checkpoint else None

    def _claim(self, event: Claim) -> None:
        d = event.decision
        copied = self._copied(d.parent, d.checkpoint) if d.action == "exploit" else None
        if copied is None:
            self.claimed.pop(str(event.member), None)
        else:
            self.claimed[str(event.member)] = copied

    def _commit(self, event: Commit) -> None:
        d, member = event.decision, event.member
        point = {"interval": event.interval, "checkpoint": event.checkpoint,
                 "hparams": event.hparams, "scalars": self._scalars(event.score, event.metrics, event.hparams, d.sigma)}
        if d.action == "exploit":
            claimed = self.claimed.pop(str(member), None)
            copied = claimed if claimed is not None and claimed["checkpoint"] == d.checkpoint \
                else self._copied(d.parent, d.checkpoint)
            if copied is not None:
                self.runs.point(member, copied, event.time)
            self.runs.note(member, event.interval, "exploit", int(d.parent), _exploit_text(event, copied), event.time)
        self.runs.point(member, point, event.time)
        self.members[str(member)] = point

    def _adopt(self, event: Adopt) -> None:
        d = event.decision
        point = self._copied(d.parent, event.checkpoint) or {
            "interval": d.interval - 1, "checkpoint": event.checkpoint, "hparams": event.hparams,
            "scalars": self._scalars(event.score, {}, event.hparams, d.sigma)}
        self.runs.point(event.member, point, event.time)
        self.runs.note(event.member, point["interval"], "adopted", int(d.parent),
                       f"took over member {d.parent}'s finished lineage (score {event.score:.6g})", event.time)
        self.members[str(event.member)] = point

    def _scalars(self, score: float, metrics: dict[str, Any], hparams: dict[str, Any],
                 sigma: float) -> dict[str, float]:
        scalars = {"score": float(score)}
        scalars.update({f"metrics/{k}": float(v) for k, v in metrics.items() if _is_number(v)})
        for name, value in hparams.items():
            if name in self.choices and value in self.choices[name]:
                scalars[f"hparams/{name}"] = float(self.choices[name].index(value))
            elif _is_number(value):
                scalars[f"hparams/{name}"] = float(value)
        if sigma > 0:
            scalars["pbt/sigma"] = float(sigma)
        return scalars


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _exploit_text(event: Commit, copied: Point | None) -> str:
    """`interval 7: copied member 2's checkpoint of interval 6 (score 0.91); lr 0.01 → 0.012`."""
    d = event.decision
    if copied is None:
        return f"interval {event.interval}: copied member {d.parent}'s checkpoint {d.checkpoint}"
    old = copied["hparams"]
    changes = ", ".join(f"{k} {_fmt(old.get(k))} \u2192 {_fmt(v)}" for k, v in event.hparams.items() if old.get(k) != v)
    return (f"interval {event.interval}: copied member {d.parent}'s checkpoint of interval {copied['interval']} "
            f"(score {copied['scalars']['score']:.6g}); {changes or 'no change'}")


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)

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

Exporting again appends only what the journal gained: OUT/.hopt-tensorboard.json records how far the
last export read the journal (its position and events); the export replays the whole journal
(timeline.py, which finds the checkpoint each exploit and adopt copied) and writes the events past
that point. Each run that gets points gets a new events file, `events.out.tfevents.<n>.hopt` with n
one more than the run's last (TensorBoard reads a run's files in name order, so they must sort in the
order written; its own writer names them by the second and the pid, which does not). A file is
written whole under a temporary name, then renamed, so a TensorBoard watching OUT never reads half of
one. The state is saved after the event files: a crash in between makes the next export write some
points again, which the default loader shows once (a repeated step replaces). Written with
tensorboard's own record writer (no TensorFlow, no torch). The experiment is only read.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli import tracking
from hopt_cli.errors import HoptError
from hopt_cli.events import Adopt, Commit
from hopt_cli.experiment import refuse_inside_experiment
from hopt_cli.space import SearchSpace
from hopt_cli.store import Store
from hopt_cli.store.fsio import fsync_dir, write_json_atomic
from hopt_cli.store.journal import Cursor
from hopt_cli.timeline import Replayed, Timeline, TrainedInterval

STATE = ".hopt-tensorboard.json"
FORMAT = 1  # of the state file
EVENTS = re.compile(r"events\.out\.tfevents\.(\d{10})\.hopt")  # the event files we write, numbered from 1


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
    found, cursor = store.read_events()
    timeline = Timeline()
    timeline.extend(found)
    runs = _Runs(store.recipe.space)
    for replayed in timeline.replayed[state["events"]:]:
        runs.write(replayed)
    if complete and not state["sessions"]:
        runs.sessions(_latest(timeline))
        state["sessions"] = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        runs.publish(out)
        write_json_atomic(out / STATE, {**state, "cursor": cursor.to_dict(), "events": len(found)})
    except OSError as err:
        raise HoptError(f"cannot write to {out}: {err.strerror or err}; choose an --out you can write to, "
                        "with room for the event files") from None
    members = {r.event.member for r in timeline.replayed if isinstance(r.event, (Commit, Adopt))}
    return TensorboardExport(out, tuple(sorted(map(_run, members))), tuple(sorted(runs.files)), runs.points,
                             len(found) - state["events"])


def _latest(timeline: Timeline) -> dict[int, TrainedInterval]:
    """Each member's latest interval: its last commit, or the finished lineage it took over."""
    latest: dict[int, TrainedInterval] = {}
    for r in timeline.replayed:
        taken = r.trained if isinstance(r.event, Commit) else r.copied if isinstance(r.event, Adopt) else None
        if taken is not None:
            latest[r.event.member] = taken
    return latest


def _check_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise HoptError("hopt tensorboard needs tensorboard: pip install 'tensorboard>=2.14' (or, in hopt's folder, "
                        "pip install -e '.[tensorboard]')")


def _run(member: int) -> str:
    return f"m{member:03d}"


def _events_before(store: Store, offset: int) -> int:
    """The valid events in the journal's first `offset` bytes: what an export that recorded only its
    journal position (hopt 0.2.0) had read."""
    position = count = 0

    def visit(data: dict[str, Any], line: bytes, valid: bool) -> None:
        nonlocal position, count
        count += valid and position < offset
        position += len(line)

    store.journal.replay(Cursor(), visit)
    return count


def _load_state(out: Path, store: Store) -> dict[str, Any]:
    """The state of `out`'s last export, checked to belong to this experiment; a fresh one if none.
    `events` is how many of the journal's events it read.

    An `out` inside an experiment directory, or not empty without a state file, is refused: the export
    would write among files that are not its own."""
    root, head = store.paths.root, store.journal.head()
    refuse_inside_experiment(out)
    fresh = {"format": FORMAT, "experiment": str(Path(root).resolve()), "head": head,
             "cursor": Cursor().to_dict(), "events": 0, "sessions": False}
    path = out / STATE
    try:
        state = json.loads(path.read_bytes())
        Cursor(**state["cursor"])
        if state["format"] != FORMAT:
            raise ValueError(f"format {state['format']}, this hopt reads {FORMAT}")
        if not isinstance(state.get("events", 0), int):
            raise ValueError(f"events: {state['events']!r} is no count")
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
    read = state["events"] if "events" in state else _events_before(store, state["cursor"]["offset"])
    return {**fresh, "cursor": state["cursor"], "events": read, "sessions": state.get("sessions") is True}


class _Runs:
    """The new events of each run, held in memory until `publish` writes each run's as one new file."""

    def __init__(self, space: SearchSpace) -> None:
        self.files: dict[str, io.BytesIO] = {}  # run -> its new records
        self.points = 0
        self.choices = {p.name: p.values for p in space.params if p.is_choice}

    def write(self, replayed: Replayed) -> None:
        """Write what one journal event adds to the runs: a commit its point (after the point it copied,
        for an exploit), an adopt the point it took over."""
        event = replayed.event
        if isinstance(event, Commit):
            assert replayed.trained is not None
            if event.decision.action == "exploit":
                if replayed.copied is not None:
                    self._point(event.member, replayed.copied, event.time)
                self._note(event.member, event.interval, "exploit", int(event.decision.parent),
                           tracking.exploit_text(replayed), event.time)
            self._point(event.member, replayed.trained, event.time)
        elif isinstance(event, Adopt):
            d = event.decision
            taken = replayed.copied or TrainedInterval(  # a lineage the journal holds no commit of
                float(event.time or 0.0), int(d.parent), d.interval - 1, event.score, event.hparams, d.action,
                d.parent, d.sigma, d.explorer, str(event.worker), event.checkpoint, d.checkpoint, {})
            self._point(event.member, taken, event.time)
            self._note(event.member, taken.interval, "adopted", int(d.parent),
                       f"took over member {d.parent}'s finished lineage (score {event.score:.6g})", event.time)

    def _event(self, member: int, step: int, values: list[Any], wall_time: float | None) -> None:
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

    def _point(self, member: int, trained: TrainedInterval, wall_time: float | None) -> None:
        """The checkpoint `trained` made, at its interval of the member's run."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value)
                  for tag, value in tracking.values(trained, self.choices).items()]
        self._event(member, trained.interval, values, wall_time)
        self.points += 1

    def _note(self, member: int, step: int, name: str, parent: int, text: str, wall_time: float | None) -> None:
        """Annotate `step` of the member's run: the scalar `pbt/<name>_from` and the text `pbt/<name>`."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb

        values = [Summary.Value(tag=f"pbt/{name}_from", simple_value=parent), *text_pb(f"pbt/{name}", text).value]
        self._event(member, step, values, wall_time)

    def sessions(self, latest: dict[int, TrainedInterval]) -> None:
        """The HParams view, written once the experiment is complete (TensorBoard keeps a run's first
        session only): each member a session of its latest interval's hyperparameters, beside its score."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        for member, trained in latest.items():
            hparams = {k: v for k, v in trained.hparams.items() if isinstance(v, (bool, int, float, str))}
            self._event(member, trained.interval, list(hparams_pb(hparams, trial_id=_run(member)).value), None)

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

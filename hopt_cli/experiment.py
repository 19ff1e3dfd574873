"""A read-only Python API over an experiment directory; every reading command of the CLI is built on it.

Reading never takes the lock: the population comes from the snapshot plus the journal's tail, and a
torn last line (a writer crashed mid-append) is simply not read yet.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hopt_cli import schedule, table
from hopt_cli.errors import CorruptFile, HoptError
from hopt_cli.policies import robust_window
from hopt_cli.population import Lineage, MemberState, Population, robust_score
from hopt_cli.recipe import Recipe
from hopt_cli.schedule import ScheduleStep
from hopt_cli.settings import touched, values as setting_values
from hopt_cli.store import LeaseInfo, Store
from hopt_cli.store.digest import checkpoint_digest
from hopt_cli.store.leases import Holder
from hopt_cli.store.fsio import read_bytes, retrying, write_atomic, write_json_atomic
from hopt_cli.store.journal import Cursor
from hopt_cli.store.paths import ExperimentPaths, checkpoint_name
from hopt_cli.timeline import Event, Timeline, TrainedInterval

SCHEMA = 2  # version of the --json documents of `hopt status` and `hopt best` (docs/json-schemas.md)
EXPORT_MARK = ".hopt-export.json"  # in a folder `hopt best --out` wrote: whose export it is


SILENT_HEARTBEATS = 1.5  # heartbeat periods without a heartbeat after which a lease is silent, no longer live


@dataclass(frozen=True)
class LeaseStatus:
    """Who trains a member now; `age` is the seconds since its last heartbeat. `silent`: a heartbeat is
    late (`age` past SILENT_HEARTBEATS periods), so its worker may be dead or stalled: not counted live.
    `stale`: the next claim reclaims it (store/leasetable.py judges): its interval is already committed,
    `age` is past the lease timeout, or (`gone`) its process is seen dead here."""

    worker: str
    host: str
    pid: int
    interval: int
    age: float
    silent: bool
    stale: bool
    gone: bool
    device: str | None  # the GPUs its worker sees (CUDA_VISIBLE_DEVICES); None: not set


@dataclass(frozen=True)
class MemberStatus:
    """One member now: `interval` is the index of the interval its latest checkpoint (and `score`) comes
    from, as `hopt best` numbers intervals; None before its first commit."""

    member: int
    interval: int | None
    score: float | None
    robust: float | None
    hparams: dict[str, Any]
    sigma: float
    explorer: bool
    failures: int
    last_error: str | None
    lease: LeaseStatus | None
    device: str | None = None  # what its latest interval trained on, as the trainable's `device` metric says


@dataclass(frozen=True)
class BestStatus:
    member: int
    interval: int
    score: float


@dataclass(frozen=True)
class Status:
    """Progress, timing, workers and members; `to_dict` is the `hopt status --json` document."""

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
    started: float | None
    elapsed: float | None
    eta: float | None
    live_workers: list[str]
    silent_workers: list[str]
    stale_workers: list[str]
    robust_window: int
    members: list[MemberStatus]
    stopped: str | None = None  # why a stop rule stopped it (None: not stopped)
    settings: dict[str, Any] = field(default_factory=dict)  # the settings `hopt set` may change, as in force
    changed: list[str] = field(default_factory=list)  # those `hopt set` changed

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}


@dataclass(frozen=True)
class Best:
    """A checkpoint with its whole history, ready to export (the best, one of the top, or a member's)."""

    member: int
    interval: int
    score: float
    metrics: dict[str, Any]
    checkpoint: Path
    schedule: list[ScheduleStep]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self), "checkpoint": str(self.checkpoint)}


@dataclass(frozen=True)
class IntervalLog:
    """One attempt at a member interval: who trained it, how it ended, and its output if still kept
    (None: collected with its checkpoint, never written, or still training)."""

    member: int
    interval: int
    attempt: int
    worker: str | None
    outcome: str  # committed, failed, released, reclaimed or training
    reason: str | None
    output: str | None


class Experiment:
    """Open an experiment directory for reading: `Experiment("runs/exp1").status()`."""

    def __init__(self, path: str | Path) -> None:
        self.store = Store.open(path)
        self._timeline = Timeline()
        self._cursor = Cursor()

    @property
    def recipe(self) -> Recipe:
        """The recipe in force, as of the last read of the journal (`hopt set` changes some settings)."""
        return self.store.recipe

    def population(self) -> Population:
        """The population as the journal has it now: its size and intervals include every `hopt extend`."""
        return self.store.sync()

    def status(self) -> Status:
        """Where the experiment stands now."""
        population = self.store.sync()
        infos = [info for info in self.store.leases.infos() if info.lease is not None]
        here = Holder.this_process("hopt-status")
        leases = {info.lease.member: self._lease_status(info, population, here) for info in infos}
        window = robust_window(self.recipe.policy.build())
        members = [self._member_status(state, leases.get(state.member), window) for state in population.members]
        top = population.best[0] if population.best else None
        started = population.started
        live = sorted({s.worker for s in leases.values() if not s.silent and not s.stale})
        silent = sorted({s.worker for s in leases.values() if s.silent and not s.stale} - set(live))
        stale = sorted({s.worker for s in leases.values() if s.stale} - set(live) - set(silent))
        eta = 0.0 if population.complete else self._eta(population) if live and not population.stopped else None
        r = self.recipe
        return Status(
            r.name, r.policy.name, r.objective.metric, r.objective.mode, population.size, population.intervals,
            population.intervals_done, population.budget, population.complete, population.failed,
            None if top is None else BestStatus(top.member, top.interval, top.score),
            started, self._elapsed(started, working=bool(live or silent)), eta, live, silent, stale, window, members,
            population.stopped, setting_values(r), touched(population.settings))

    def _lease_status(self, info: LeaseInfo, population: Population, here: Holder) -> LeaseStatus:
        """The lease `info` as status shows it, stale as the lease table judges it for the next claim."""
        holder = info.lease.holder
        gone = holder.is_gone(here)
        stale = self.store.leases.why_stale(info, population, here) is not None
        silent = not stale and info.age > SILENT_HEARTBEATS * self.recipe.lease.heartbeat
        return LeaseStatus(holder.worker, holder.host, holder.pid, info.lease.interval, round(info.age, 1), silent,
                           stale, gone, holder.device)

    def _elapsed(self, started: float | None, working: bool) -> float | None:
        """Seconds from the journal's first event to now while a worker may be training (a lease that is
        not stale), else to its last event: a run that ended, failed or was killed stops the clock."""
        end = time.time() if working else self.store.journal.last_time()
        return None if started is None or end is None else round(max(end - started, 0.0), 3)

    @staticmethod
    def _member_status(state: MemberState, lease: LeaseStatus | None, window: int) -> MemberStatus:
        scores = state.lineage.scores
        robust = robust_score(scores, window) if scores else None
        return MemberStatus(state.member, state.interval - 1 if scores else None, scores[-1] if scores else None,
                            robust, state.hparams, state.sigma, state.explorer, state.failures, state.last_error, lease,
                            _device(state.metrics))

    def _eta(self, population: Population) -> float | None:
        """Seconds left at the rate of the population's recent commits, measured up to the last one (so
        it moves when something is committed, not while waiting); None without progress."""
        if not population.progress:
            return None
        (since, done_then), (last, done) = population.progress[0], population.progress[-1]
        if done <= done_then or last <= since:
            return None
        return round((population.budget - done) * (last - since) / (done - done_then), 3)

    def watch(self, every: float) -> Iterator[Status]:
        """The status every `every` seconds, until the experiment is complete or has failed."""
        while True:
            report = self.status()
            yield report
            if report.complete or report.failed or report.stopped:
                return
            time.sleep(every)

    def best(self) -> Best:
        """The best interval ever committed (among the `keep_best` kept), with its schedule."""
        return self.top(1)[0]

    def top(self, k: int) -> list[Best]:
        """The `k` best intervals ever committed, best first (at most `keep_best` are kept)."""
        if k < 1:
            raise HoptError(f"ask for at least 1 best interval (got {k})")
        population = self.store.sync()
        if k > self.recipe.keep_best:
            raise HoptError(f"only the {self.recipe.keep_best} best intervals are kept (keep_best in the recipe); "
                            f"ask for {self.recipe.keep_best} or fewer")
        if not population.best:
            raise HoptError(f"{self.store.paths.root}: no interval has been committed yet; "
                            "run workers first (`hopt worker` or `hopt run`)")
        return [self._result(b.member, b.interval, b.score, b.metrics, b.checkpoint, b.lineage)
                for b in population.best[:k]]

    def member(self, member: int) -> Best:
        """Member `member`'s latest checkpoint, with its lineage's schedule."""
        self._check_member(member)
        state = self.store.sync().members[member]
        if state.checkpoint is None:
            raise HoptError(f"member {member} has not committed an interval yet")
        return self._result(member, state.interval - 1, state.lineage.scores[-1], state.metrics, state.checkpoint,
                            state.lineage)

    def _result(self, member: int, interval: int, score: float, metrics: dict[str, Any], checkpoint: str,
                lineage: Lineage) -> Best:
        return Best(member, interval, score, metrics, self.store.paths.checkpoint(checkpoint),
                    schedule.steps(lineage))

    def check_unchanged(self, result: Best) -> None:
        """Refuse a checkpoint that is missing, or whose files changed after its commit (its content digest
        differs from the one the commit recorded); one committed before hopt recorded digests is not compared."""
        checkpoint = result.checkpoint
        other = "export another interval (`hopt best --top K` or `--member M`)"
        if not retrying(checkpoint.is_dir, checkpoint):
            raise CorruptFile(checkpoint, "is missing (deleted outside hopt?)", f"restore it from a backup, or {other}")
        recorded = self._recorded_digests().get(checkpoint.name)
        if recorded is None or retrying(lambda: checkpoint_digest(checkpoint), checkpoint) == recorded:
            return
        raise CorruptFile(checkpoint, f"changed after member {result.member} interval {result.interval} committed it "
                          f"(its content no longer matches the digest recorded then): {self.recipe.trainable_text} "
                          "wrote into it while resuming from it as ctx.parent (the workers' logs name the "
                          "interval), or something outside hopt did",
                          f"{other}, and make the trainable write only into ctx.out")

    def _recorded_digests(self) -> dict[str, str | None]:
        """The digest each kept checkpoint's commit recorded, by checkpoint name."""
        population = self.store.sync()
        kept = [*population.members, *population.best]
        return {entry.checkpoint: entry.digest for entry in kept if entry.checkpoint is not None}

    def export(self, result: Best, out: str | Path) -> Best:
        """Copy `result`'s checkpoint and write its schedule.yaml and scores.csv into `out`.

        The copy is made under a temporary name and renamed into place once whole, so a failure (a
        full disk) leaves `out` as it was, with no half-written checkpoint. `out` must be new, empty, or an
        earlier export of this experiment, and outside every experiment directory. A checkpoint whose
        files changed after its commit is refused (`check_unchanged`).
        """
        self.check_unchanged(result)
        return self._export(result, Path(out))

    def _export(self, result: Best, out: Path) -> Best:
        self._check_export_folder(out)
        document = schedule.document(self.recipe, result.member, result.score, result.schedule)
        staged: Path | None = None
        try:
            out.mkdir(parents=True, exist_ok=True)
            staged = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=out))
            _copy_tree(result.checkpoint, staged)
            write_atomic(out / "schedule.yaml", schedule.dump(document).encode())
            write_atomic(out / "scores.csv", schedule.scores_csv(result.schedule).encode())
            target = out / "checkpoint"
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
            self._mark_export_folder(out)
        except OSError as err:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            raise HoptError(f"cannot export to {out}: {err.strerror or err}; choose an --out you can write to, "
                            "with room for the checkpoint") from None
        return result

    def export_best(self, out: str | Path) -> Best:
        """Export the best interval into `out`."""
        return self.export(self.best(), out)

    def export_top(self, k: int, out: str | Path) -> list[Best]:
        """Export the `k` best into `out`/rank-1 ... `out`/rank-k."""
        out = Path(out)
        entries = self.top(k)
        self._check_export_folder(out)
        for entry in entries:  # all of them before any is written: a refusal leaves `out` as it was
            self.check_unchanged(entry)
        exported = [self._export(entry, out / f"rank-{rank}") for rank, entry in enumerate(entries, 1)]
        try:
            self._mark_export_folder(out)
        except OSError as err:
            raise HoptError(f"cannot export to {out}: {err.strerror or err}; choose an --out you can write to") \
                from None
        return exported

    def _check_export_folder(self, out: Path) -> None:
        """Refuse an export folder inside an experiment directory (which hopt manages and cleans), one
        that holds an export of another experiment, and a non-empty one that holds no export at all."""
        refuse_inside_experiment(out)
        try:
            entries = os.listdir(out)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise HoptError(f"--out {out} is a file; choose a new or empty folder") from None
        if not entries:
            return
        mark = _read_json(out / EXPORT_MARK)
        if mark is None:
            raise HoptError(f"--out {out} is not empty and holds no export of `hopt best` ({EXPORT_MARK}); choose "
                            "a new or empty folder")
        if mark.get("head") != self.store.journal.head():
            raise HoptError(f"--out {out} holds the export of another experiment ({mark.get('experiment')}); "
                            f"choose another --out, or delete {out} first")

    def _mark_export_folder(self, out: Path) -> None:
        """Say in the whole export `out` whose export it is: exporting again there replaces it."""
        write_json_atomic(out / EXPORT_MARK, {"hopt_export": 1, "experiment": str(self.store.paths.root.resolve()),
                                              "head": self.store.journal.head()})

    def history(self) -> list[TrainedInterval]:
        """Every committed interval, in journal order."""
        return self.timeline().commits

    def dataframe(self) -> Any:
        """The results table as a pandas DataFrame (extra `table`): one row per committed interval, with its
        member, interval, action, parent, worker, time, duration, score, metrics/* and hparams/* columns."""
        replayed = self.timeline()
        return table.dataframe(table.rows(replayed.commits, replayed.entries))

    def events(self, member: int | None = None) -> list[Event]:
        """Every journal event as a readable record (only member `member`'s when given)."""
        if member is not None:
            self._check_member(member)
        return [e for e in self.timeline().entries if member is None or e.member == member]

    def interval_logs(self, member: int, interval: int) -> list[IntervalLog]:
        """Every attempt at `member`'s `interval`, in journal order, with the output each one kept."""
        self._check_member(member)
        return [IntervalLog(member, interval, a.attempt, a.worker, a.outcome, a.reason,
                            _read_text(self.store.paths.interval_log(checkpoint_name(member, interval, a.token))))
                for a in self.timeline().attempts(member, interval)]

    def _check_member(self, member: int) -> None:
        size = self.population().size
        if not 0 <= member < size:
            raise HoptError(f"there is no member {member}: the population has members 0 to {size - 1}")

    def timeline(self) -> Timeline:
        """The journal replayed so far (read incrementally): every event's record, each commit's trained
        interval and, for an exploit, the commit whose checkpoint it copied."""
        new, self._cursor = self.store.read_events(self._cursor)
        self._timeline.extend(new)
        return self._timeline


def refuse_inside_experiment(out: Path) -> None:
    """Refuse an --out at or below an experiment directory (a folder holding experiment.yaml): hopt manages
    and cleans that directory, and an export there would be collected or mixed with its files."""
    path = out.resolve()
    inside = next((folder for folder in (path, *path.parents) if ExperimentPaths(folder).experiment.is_file()), None)
    if inside is not None:
        raise HoptError(f"--out {out} is inside the experiment directory {inside}, which hopt manages "
                        "and cleans; choose a folder outside it")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing or holds no object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_text(path: Path) -> str | None:
    try:
        return read_bytes(path).decode(errors="replace")
    except FileNotFoundError:
        return None


def _copy_tree(source: Path, target: Path) -> None:
    """Copy the folder `source` into the existing folder `target`; the first failure raises its OSError.

    Unlike shutil.copytree, which gathers failures into a shutil.Error without the system's words.
    """
    for folder, subfolders, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        for name in subfolders:
            (destination / name).mkdir()
        for name in files:
            shutil.copy2(Path(folder) / name, destination / name)


def _device(metrics: dict[str, Any]) -> str | None:
    """The device an interval trained on, where its trainable returned one as the metric `device` (the
    torch trainables of workers/ do); a CPU fallback shows here as `cpu`."""
    device = metrics.get("device")
    return device if isinstance(device, str) else None

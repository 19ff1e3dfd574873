"""The `hopt` command line: parsing and formatting only; the work lives in the modules below it."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import cloudpickle

from hopt_cli import intervallog, launch, schedule, settings, table, tensorboard, timeline, tracking
from hopt_cli.doctor import diagnose
from hopt_cli.errors import HoptError, Interrupted, command
from hopt_cli.experiment import SCHEMA, Best, Experiment, IntervalLog, MemberStatus, Status, refuse_inside_experiment
from hopt_cli.launch import create, enter_project
from hopt_cli.progress import ProgressLine
from hopt_cli.recipe import LOCK_KINDS
from hopt_cli.retrain import check_trainable, replay
from hopt_cli.signals import PREEMPTION_SIGNALS, StopSignals
from hopt_cli.slurm import (SbatchOptions, SlurmEnvironment, check_requeue, node_local_warning, our_bin,
                            requeue_after_poisoning, requeue_if_preempted, submit, worker_command, write_sbatch)
from hopt_cli.store import Store
from hopt_cli.text import counted
from hopt_cli.worker import ProcessPoisoned, Worker

SUMMARY_ROWS = 20  # members `hopt status` lists before it summarises the rest (--all lists them all)
DIR = click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
                   help="The experiment directory (shared by every worker).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hopt")
def cli() -> None:
    """Population based training with ROMUL, coordinated through one shared directory."""


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@DIR
def init(recipe: Path, root: Path) -> None:
    """Create the experiment in --dir from RECIPE (a no-op if it exists with the same recipe)."""
    store = create(recipe, root)
    warning = launch.command_warning(store.recipe)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    population = store.sync()
    click.echo(f"experiment {store.recipe.name} ready in {root}: {population.size} members x "
               f"{counted(population.intervals, 'interval')}, policy {store.recipe.policy.name}")


@cli.command()
@DIR
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Create the experiment from this recipe first if needed (safe for many workers at once).")
@click.option("--name", help="This worker's name in leases and logs [default: from SLURM, else host-pid].")
@click.option("--requeue", "requeue_", is_flag=True,
              help="When preempted, requeue this SLURM job (array task) if the experiment is not complete.")
@click.option("--preempt-signal", type=click.Choice([s.name.removeprefix("SIG") for s in PREEMPTION_SIGNALS],
                                                   case_sensitive=False), default="USR1",
              show_default=True, help="The preemption signal (sbatch --signal=B:USR1@GRACE sends it).")
@click.option("--verbose", is_flag=True, help="Also log what each claim and commit cost: lock wait and hold.")
@click.option("--workers", "count", default=1, show_default=True, type=click.IntRange(min=1),
              help="Run this many worker processes, <name>-0 .. <name>-K-1, one per GPU of CUDA_VISIBLE_DEVICES "
                   "(a SLURM task's allocation), each with a log of its own; signals reach them all.")
@click.option("--trainable-from-stdin", "piped", is_flag=True, hidden=True,
              help="Read the trainable, pickled by hopt_cli.run(), from standard input.")
def worker(root: Path, recipe: Path | None, name: str | None, requeue_: bool, preempt_signal: str,
           verbose: bool, count: int, piped: bool) -> None:
    """Train intervals until the experiment is complete; SIGTERM or the preemption signal stop it at once."""
    env = SlurmEnvironment.from_env()
    if requeue_:
        check_requeue(env)
    store = create(recipe, root.absolute()) if recipe else Store.open(root.absolute())
    enter_project(store.recipe)
    trainable = cloudpickle.loads(sys.stdin.buffer.read()) if piped else None
    name = name or env.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    _log_to_stderr(name, logging.DEBUG if verbose else logging.INFO)
    intervallog.bound()
    log = logging.getLogger("hopt")
    preemption = signal.Signals[f"SIG{preempt_signal.upper()}"]
    if count > 1:
        _worker_group(store, name, count, preemption, trainable, requeue_, env)
        return
    signals = StopSignals(preemption)
    signals.install()
    try:
        report = Worker(store, name, stop=signals, trainable=trainable).run()
    except ProcessPoisoned as poisoned:
        if requeue_:
            requeue_after_poisoning(env, str(poisoned))
        raise
    finally:
        signals.restore()
    how = f"stopped by {signals.signal_name}" if report.stopped else \
        f"stopped ({report.stop_rule})" if report.stop_rule and not report.complete else "experiment complete"
    log.info("%s: %s committed, %d failed, %d discarded", how, counted(report.commits, "interval"), report.failures,
             report.fenced)
    if requeue_:
        requeue_if_preempted(env, signals.preempted, report.complete)


def _worker_group(store: Store, name: str, count: int, preemption: signal.Signals, trainable: Any,
                  requeue_: bool, env: SlurmEnvironment) -> None:
    """`hopt worker --workers K`: K workers in this process's place, requeued once if preempted with work left."""
    log = logging.getLogger("hopt")
    result = launch.run_task(store, name, count, preemption, trainable)
    if result.interrupted:
        how = f"stopped by {result.interrupted.name}"
    else:
        how = "experiment complete" if result.complete else f"stopped ({result.stopped})" if result.stopped else \
            "workers ended"
    log.info("%s: %s", how, ", ".join(f"{n} exit {c}" for n, c in result.exit_codes.items()))
    launch.check_ended(store, result)
    if requeue_:
        requeue_if_preempted(env, result.interrupted == preemption, result.complete)


@cli.command()
@DIR
@click.option("--array", required=True, type=int, help="Worker tasks in the array.")
@click.option("--workers-per-task", "per_task", default=1, show_default=True, type=click.IntRange(min=1),
              help="Workers in each task, one per GPU it is allocated (e.g. with --gres gpu:4).")
@click.option("--parallel", "parallelism", type=int, help="At most this many tasks at once (sbatch's %k).")
@click.option("--partition", help="sbatch --partition.")
@click.option("--time", "time_limit", help="sbatch --time per task, e.g. 04:00:00.")
@click.option("--gres", help="sbatch --gres, e.g. gpu:1.")
@click.option("--cpus-per-task", type=int, help="sbatch --cpus-per-task.")
@click.option("--mem", help="sbatch --mem, e.g. 32G.")
@click.option("--grace", default=120, show_default=True, type=int,
              help="Seconds before the time limit when SLURM sends SIGUSR1: the worker stops and requeues.")
@click.option("--job-name", help="sbatch --job-name [default: hopt-<dir name>].")
@click.option("--sbatch", "extra", multiple=True,
              help="An extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable).")
@click.option("--setup", multiple=True,
              help="A shell line run before the worker, e.g. 'module load cuda' (repeatable).")
@click.option("--command", "command", help="How a task starts a worker [default: this hopt's python -m "
                                            "hopt_cli worker, by absolute path].")
@click.option("--requeue/--no-requeue", "requeue_", default=True, show_default=True,
              help="Preempted workers requeue their own task while work remains.")
@click.option("--submit", "submit_", is_flag=True, help="Submit the script with sbatch and print the job id.")
def slurm(root: Path, array: int, per_task: int, parallelism: int | None, partition: str | None,
          time_limit: str | None, gres: str | None, cpus_per_task: int | None, mem: str | None, grace: int,
          job_name: str | None, extra: tuple[str, ...], setup: tuple[str, ...], command: str | None, requeue_: bool,
          submit_: bool) -> None:
    """Write D/slurm/worker.sbatch for a worker array (and submit it): requeue, appended logs, preemption."""
    store = Store.open(root)  # every task opens it: refuse a --dir that is not an experiment now, not in the queue
    project = Path(store.recipe.project) if store.recipe.project else None
    options = SbatchOptions(root, array, parallelism, partition, time_limit, gres, cpus_per_task, mem, grace,
                            job_name, extra, setup, command or worker_command(), requeue_, project, per_task,
                            our_bin())
    warning = None if command else node_local_warning()
    if warning:
        click.echo(f"warning: {warning}", err=True)
    script = write_sbatch(options)
    click.echo(f"wrote {script}; logs go to {options.paths.slurm_log_pattern}", err=True)
    if submit_:
        click.echo(submit(script))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@DIR
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Local worker processes.")
@click.option("--gpus", help="One GPU per worker, e.g. 0,1,2,3 (round-robin if fewer than workers), or all.")
def run(recipe: Path, root: Path, workers: int, gpus: str | None) -> None:
    """Run the experiment on this machine with local workers; run it again to resume."""
    line = ProgressLine()
    try:
        experiment = launch.run(recipe, root, workers, gpus=gpus, progress=line)
    except Interrupted as err:
        line.say(str(err))
        sys.exit(err.exit_code)
    best = experiment.best()
    stopped = experiment.population().stopped
    if stopped and not experiment.population().complete:
        click.echo(f"stopped: {stopped}; `{command('hopt', 'extend', '--dir', root)}` resumes it")
    click.echo(f"done: best {experiment.recipe.objective.metric} {best.score:.6g} (member {best.member}, "
               f"interval {best.interval}); export it with `{command('hopt', 'best', '--dir', root, '--out', 'DIR')}`")


@cli.command()
@DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/json-schemas.md).")
@click.option("--watch", is_flag=True, help="Refresh until the experiment is complete (Ctrl-C leaves).")
@click.option("--interval", "every", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes with --watch.")
@click.option("--all", "every_member", is_flag=True,
              help=f"A row for every member [default: the {SUMMARY_ROWS} best of a larger population].")
def status(root: Path, as_json: bool, watch: bool, every: float, every_member: bool) -> None:
    """Progress, timing, workers, best score, and per member: scores, hyperparameters, lease."""
    experiment = Experiment(root)
    if as_json and watch:
        raise HoptError("--json prints one document; leave out --watch (poll `hopt status --json` instead)")
    if as_json:
        click.echo(json.dumps(experiment.status().to_dict(), indent=2))
        return
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and watch else ""
    try:
        for report in experiment.watch(every) if watch else [experiment.status()]:
            click.echo(clear + _status_table(report, every_member) + ("\n" if watch and not clear else ""))
    except KeyboardInterrupt:
        return


def _status_table(s: Status, every_member: bool = False) -> str:
    head = f"{s.name}: {s.done}/{s.total} intervals ({100 * s.done / s.total:.0f}%), policy {s.policy}"
    if s.best:
        head += f", best {s.metric} {s.best.score:.6g} (member {s.best.member}, interval {s.best.interval})"
    if s.complete:
        head += ", complete"
    eta = "" if s.complete else f", ETA {_duration(s.eta)}"
    silent = f", {len(s.silent_workers)} silent" if s.silent_workers else ""
    timing = (f"elapsed {_duration(s.elapsed)}{eta}, workers: {len(s.live_workers)} live{silent}, "
              f"{len(s.stale_workers)} stale")
    lines = [head, timing] + ([f"FAILED: {s.failed}"] if s.failed else [])
    if s.stopped:
        lines.append(f"STOPPED: {s.stopped}; `hopt extend` resumes it")
    if s.changed:
        lines.append("set by `hopt set`: " + " ".join(f"{k}={_setting(s.settings[k])}" for k in s.changed))
    names = list(s.members[0].hparams) if s.members and s.members[0].hparams else []
    shown = s.members if every_member or len(s.members) <= SUMMARY_ROWS else _best_members(s)
    devices = any(m.device is not None for m in shown)  # a column only where the trainable says
    rows = [["member", "interval", s.metric, f"robust({s.robust_window})", *names, "sigma",
             *(["trained on"] if devices else []), "lease (worker host:pid heartbeat)"]]
    for m in shown:
        state = "" if m.lease is None else "DEAD " if m.lease.gone else "STALE " if m.lease.stale else \
            "SILENT " if m.lease.silent else ""
        gpu = f" gpu {m.lease.device}" if m.lease and m.lease.device is not None else ""
        lease = "free" if m.lease is None else (f"{state}{m.lease.worker} "
                                                f"{m.lease.host}:{m.lease.pid}{gpu} {_duration(m.lease.age)} ago")
        rows.append([f"{m.member}{'*' if m.explorer else ''}", _fmt(m.interval), _fmt(m.score), _fmt(m.robust),
                     *(_fmt(m.hparams.get(n)) for n in names), f"{m.sigma:.3g}",
                     *([_fmt(m.device)] if devices else []), lease])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if len(shown) < len(s.members):
        lines.append(_rest_summary(s, {m.member for m in shown}))
    if any(m.explorer for m in shown):
        lines.append("* explorer (never copies, never changes its hyperparameters)")
    return "\n".join(lines)


def _best_members(s: Status) -> list[MemberStatus]:
    """The SUMMARY_ROWS best-scoring members (those without a score last), in member order."""
    sign = -1 if s.mode == "max" else 1
    ranked = sorted(s.members, key=lambda m: (m.score is None, sign * (m.score or 0.0), m.member))
    return sorted(ranked[:SUMMARY_ROWS], key=lambda m: m.member)


def _rest_summary(s: Status, shown: set[int]) -> str:
    rest = [m for m in s.members if m.member not in shown]
    intervals = sorted(m.interval for m in rest if m.interval is not None)
    at = f"at intervals {intervals[0]}-{intervals[-1]}" if intervals else "none committed yet"
    training = sum(m.lease is not None for m in rest)
    failing = sum(m.failures > 0 for m in rest)
    return (f"... and {len(rest)} more members ({at}, {training} training, {failing} with failures): "
            "`hopt status --all` lists every one")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d{h:02d}h" if days else f"{hours}h{m:02d}m" if hours else f"{minutes}m{s:02d}s"


@cli.command()
@DIR
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Export the checkpoint, schedule.yaml and scores.csv into this folder (rank-N/ with --top).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/json-schemas.md).")
@click.option("--member", type=int, help="Member M's latest checkpoint and lineage instead of the best.")
@click.option("--top", type=int, help="The K best intervals kept (K <= keep_best of the recipe).")
def best(root: Path, out: Path | None, as_json: bool, member: int | None, top: int | None) -> None:
    """The best interval committed so far (or --member, --top), its score history and schedule."""
    experiment = Experiment(root)
    if member is not None and top is not None:
        raise HoptError("give --member or --top, not both")
    if top is not None:
        entries = experiment.export_top(top, out) if out else experiment.top(top)
        click.echo(json.dumps({"schema": SCHEMA, "top": [e.to_dict() for e in entries]},
                              indent=2) if as_json else _top_table(experiment, entries, out))
        return
    result = experiment.member(member) if member is not None else experiment.best()
    if out:
        experiment.export(result, out)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    what = f"member {member}'s latest" if member is not None else "best"
    click.echo(f"{what} {experiment.recipe.objective.metric} {result.score:.6g}: member {result.member}, "
               f"interval {result.interval}, checkpoint {result.checkpoint}")
    click.echo("  metrics: " + " ".join(f"{k}={_fmt(v)}" for k, v in result.metrics.items()))
    for step in result.schedule:
        copied = f"  <- copied member {step.copied_from}" if step.copied_from is not None else ""
        params = " ".join(f"{k}={_fmt(v)}" for k, v in step.hparams.items())
        click.echo(f"  {step.interval:4d}  member {step.member:3d}  {step.score:10.5g}  {params}{copied}")
    if out:
        click.echo(f"exported to {out}: checkpoint/, schedule.yaml, scores.csv")


def _top_table(experiment: Experiment, entries: list[Best], out: Path | None) -> str:
    lines = [f"rank  {experiment.recipe.objective.metric:>10}  member  interval  exploits"]
    for rank, e in enumerate(entries, 1):
        exploits = sum(step.copied_from is not None for step in e.schedule)
        lines.append(f"{rank:4d}  {e.score:10.5g}  {e.member:6d}  {e.interval:8d}  {exploits:8d}")
    lines.append(f"exported to {out}/rank-1 ... rank-{len(entries)}" if out else "export them with --out DIR")
    return "\n".join(lines)


@cli.command("replay")
@click.argument("schedule_file", metavar="SCHEDULE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dir", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the replayed checkpoint/ and scores.csv.")
def replay_command(schedule_file: Path, out: Path) -> None:
    """Retrain one model from scratch following SCHEDULE (a schedule.yaml from `hopt best --out`)."""
    plan = schedule.load(schedule_file)
    project = plan.project
    if project is not None and not os.path.isdir(project):
        project = os.getcwd()
        click.echo(f"the schedule's project directory {plan.project} is not here: running the trainable in "
                   f"{project}", err=True)
    check_trainable(plan, schedule_file, out, project)
    click.echo(f"replaying member {plan.member}'s lineage: {plan.intervals} intervals in {len(plan.spans)} "
               f"segments into {out}", err=True)
    line = ProgressLine()
    signals = StopSignals()
    signals.install()
    try:
        result = replay(plan, out, None, lambda: signals.requested,
                        lambda interval, score: line.show(interval + 1, plan.intervals, f"{plan.metric} {score:.4g}"),
                        project)
    finally:
        signals.restore()
    if result.stopped:
        line.say(f"stopped by {signals.signal_name} after {len(result.scores)} of {plan.intervals} intervals; "
                 f"{out} holds them")
        sys.exit(130)
    same = "identical" if result.score == result.original else (
        f"differs by {result.score - result.original:+.3g}: a replay is exact on the CPU with the recorded threads, "
        "on a GPU only with deterministic kernels on the same GPU model and software (docs/trainables.md)")
    click.echo(f"replayed {plan.metric} {result.score:.10g} vs original {result.original:.10g} ({same}); "
               f"checkpoint and scores.csv in {out}")


@cli.command()
@DIR
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for scores.png, schedule.png, lineage.png and sigma.png.")
def plot(root: Path, out: Path) -> None:
    """Draw the experiment: scores, the best lineage's schedule, who copied whom, step sizes."""
    from hopt_cli.plots import plot as draw

    for path in draw(Experiment(root), out):
        click.echo(path)


@cli.command("tensorboard")
@DIR
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The TensorBoard log directory (one run per member); exporting again appends what is new.")
def tensorboard_command(root: Path, out: Path) -> None:
    """Export every member's metrics, hyperparameters and exploits per interval for `tensorboard --logdir OUT`."""
    done = tensorboard.export(root, out)
    if done.points:
        click.echo(f"exported {done.points} points ({done.events} new journal events) to {len(done.updated)} of "
                   f"{len(done.runs)} runs in {out}; view them: {command('tensorboard', '--logdir', out)}")
    else:
        click.echo(f"{out} is up to date ({len(done.runs)} runs); view them: {command('tensorboard', '--logdir', out)}")


@cli.command()
@DIR
@click.option("--member", type=int, help="Only this member's events.")
@click.option("--interval", type=int, help="With --member: what the trainable wrote while training that interval.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/json-schemas.md).")
def log(root: Path, member: int | None, interval: int | None, as_json: bool) -> None:
    """The journal as readable events: claims, commits, exploits with their mutation, failures, reclaims."""
    if interval is not None:
        if member is None or as_json:
            raise click.UsageError("--interval shows one member's interval: give --member too, without --json")
        _interval_output(Experiment(root), member, interval)
        return
    events = Experiment(root).events(member)
    if as_json:
        click.echo(json.dumps({"schema": SCHEMA, "events": [e.to_dict() for e in events]}, indent=2))
        return
    if not events:
        click.echo("no events yet", err=True)
    width = max((len(e.worker or "-") for e in events), default=1)
    for e in events:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
        click.echo(f"{stamp}  {e.worker or '-':<{width}}  {e.kind:<7}  {timeline.describe(e)}")


def _interval_output(experiment: Experiment, member: int, interval: int) -> None:
    """Each kept attempt's output under a line saying whose it was and how it ended."""
    attempts = experiment.interval_logs(member, interval)
    kept = [a for a in attempts if a.output is not None]
    if not kept:
        raise HoptError(_no_interval_log(experiment.store.paths.root, member, interval, attempts))
    for a in kept:
        ended = f"{a.outcome}: {a.reason}" if a.reason else a.outcome
        click.echo(f"== member {member} interval {interval}, attempt {a.attempt + 1} by {a.worker}: {ended} ==")
        click.echo(a.output, nl=False)


def _no_interval_log(root: Path, member: int, interval: int, attempts: list[IntervalLog]) -> str:
    where = f"member {member} interval {interval}"
    if not attempts:
        return (f"{where} was never trained (an exploit may have jumped past it); "
                f"`{command('hopt', 'log', '--dir', root, '--member', member)}` lists its intervals")
    if attempts[-1].outcome == "training":
        return f"{where} is training now: its output is in the log of worker {attempts[-1].worker} until it ends"
    return (f"no log is kept of {where}: a log goes with its checkpoint, and this one was collected (or the "
            "worker's stderr was no file); `hopt best --member` and the kept checkpoints' intervals have theirs")


@cli.command()
@DIR
def retry(root: Path) -> None:
    """After fixing what made a member fail too often: let the workers try the experiment again."""
    if Store.open(root).retry():
        click.echo(f"{root}: failure counts cleared; start the workers again")
    else:
        click.echo(f"{root}: the experiment has not failed; nothing to do")


@cli.command()
@DIR
@click.option("--intervals", type=click.IntRange(min=1), help="Intervals per member from now on (more than now).")
@click.option("--population", type=click.IntRange(min=1), help="Members from now on (more than now).")
def extend(root: Path, intervals: int | None, population: int | None) -> None:
    """Grow the experiment: train every member longer, or add members drawn as the first ones were; after a stop
    rule stopped it, resume it (with no option: at the budget it has)."""
    store = Store.open(root)
    stopped = store.sync().stopped
    if intervals is None and population is None and not stopped:
        raise click.UsageError("say how to grow it: --intervals N, --population M, or both")
    grown = store.extend(population, intervals)
    now = store.population
    how = "resumed after its stop" if stopped else "grown"
    click.echo(f"{root}: {now.size} members x {now.intervals} intervals"
               + (f" ({how}); running workers take it up at their next claim, finished ones must be started again"
                  if grown else " already; nothing to do"))


@cli.command("set")
@DIR
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
def set_(root: Path, assignments: tuple[str, ...]) -> None:
    """Change operational settings of a running experiment (max_failures, interval_timeout, lease.timeout,
    lease.heartbeat, keep_best, stop.*): journaled, taken up by every worker at its next claim."""
    changes = settings.parse(assignments)
    changed = Store.open(root).change_settings(changes)
    click.echo(f"{root}: " + ", ".join(f"{k}={_setting(v)}" for k, v in changes.items())
               + ("; running workers take it up at their next claim" if changed else " already; nothing to do"))


def _setting(value: Any) -> str:
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@cli.command()
@DIR
@click.option("--lock", "lock_kind", type=click.Choice(LOCK_KINDS),
              help="The lock kind to test [default: the experiment's, else flock; --peer tests both].")
@click.option("--min-free-gb", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Fail when less space than this is free.")
@click.option("--peer", is_flag=True,
              help="Test across two nodes: run it on both at once, e.g. `srun -N2 hopt doctor --peer --dir D`.")
@click.option("--peer-timeout", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the other node's `hopt doctor --peer`.")
def doctor(root: Path, lock_kind: str | None, min_free_gb: float, peer: bool, peer_timeout: float) -> None:
    """Check the filesystem under --dir: its type, hard links, the lock, atomic replace, fsync, clock skew,
    free space; with --peer, lock exclusion, appends, listings and replaces across two nodes."""
    if peer:
        click.echo(f"hopt doctor: waiting up to {peer_timeout:g} s for `hopt doctor --peer` on another node", err=True)
    failed = False
    for check in diagnose(root, lock_kind, min_free_gb, peer_timeout if peer else None):
        click.echo(check.line())
        failed = failed or not check.ok
    if failed:
        sys.exit(1)


def _log_to_stderr(name: str, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s"))
    logger = logging.getLogger("hopt")
    logger.addHandler(handler)
    logger.setLevel(level)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point (`args`: the command line after `hopt`, sys.argv's where None): every error is one line
    on stderr, never a traceback; the exit status says its kind (2: the user's input or usage, 1: a
    runtime failure, 130: stopped by a signal)."""
    try:
        cli.main(args=args, prog_name="hopt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as err:
        err.show()
        sys.exit(err.exit_code)
    except click.UsageError as err:
        hint = f"; see `{err.ctx.command_path} --help`" if err.ctx is not None else ""
        message = " ".join(err.format_message().split()).rstrip(".")
        click.echo(f"hopt: error: {message}{hint}", err=True)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except HoptError as err:
        click.echo(f"hopt: error: {err}", err=True)
        sys.exit(err.exit_code)
    except OSError as err:
        click.echo(f"hopt: error: {_os_error(err)}", err=True)
        sys.exit(2 if err.errno in _NOT_WRITABLE else 1)


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _os_error(err: OSError) -> str:
    """A filesystem error as one line: the path, the system's words, and what to do where we know."""
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or str(err)
    if err.errno in _NOT_WRITABLE:
        return f"{where}{what}; hopt needs to write to the experiment directory: use a writable one or fix its permissions"
    if err.errno == errno.ENOSPC:
        return f"{where}{what}; free space on that filesystem, then run the command again"
    return f"{where}{what}"


@cli.command("export")
@DIR
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The table's file: FILE.csv, or FILE.parquet (needs pyarrow); written whole, replacing one there.")
def export_command(root: Path, out: Path) -> None:
    """Write the results table, one row per committed interval, with every metric and hyperparameter."""
    refuse_inside_experiment(out)
    frame = Experiment(root).dataframe()
    table.write(frame, out)
    click.echo(f"wrote {counted(len(frame), 'row')} x {counted(len(frame.columns), 'column')} to {out}")


@cli.command("mlflow")
@DIR
@click.option("--tracking-uri", help="Where MLflow keeps runs: http://HOST:PORT, sqlite:///FILE.db or a folder "
                                     "[default: MLFLOW_TRACKING_URI, else MLflow's own default].")
@click.option("--experiment", "name", help="The MLflow experiment to log into [default: the recipe's name].")
@click.option("--watch", is_flag=True, help="Keep logging what is new until the experiment is complete.")
def mlflow_command(root: Path, tracking_uri: str | None, name: str | None, watch: bool) -> None:
    """Log every member's scores, metrics, hyperparameters and exploits as MLflow runs; again: only what is new."""
    from hopt_cli import mlflow_export

    def once() -> bool:
        done = mlflow_export.export(root, tracking_uri, name)
        if watch and not (done.points or done.best is not None or done.ended):
            return False  # a quiet pass: nothing new to say
        best = f"; the best checkpoint uploaded to member {done.best}'s run" if done.best is not None else ""
        click.echo(f"logged {counted(done.points, 'interval')} to {done.updated} of {counted(done.runs, 'member run')} "
                   f"under parent run {done.parent_run} (MLflow experiment {done.experiment_id}){best}"
                   + ("; the experiment has ended" if done.ended else ""))
        return done.ended

    tracking.follow(once, watch)


@cli.command("wandb")
@DIR
@click.option("--project", required=True, help="The W&B project to log into.")
@click.option("--offline", is_flag=True,
              help="Write the runs only to W&B's folder (WANDB_DIR), for `wandb sync` later.")
def wandb_command(root: Path, project: str, offline: bool) -> None:
    """Log every member's scores, metrics, hyperparameters and exploits as W&B runs; again: only what is new."""
    from hopt_cli import wandb_export

    done = wandb_export.export(root, project, offline)
    best = f"; the best checkpoint logged to member {done.best}'s run" if done.best is not None else ""
    click.echo(f"logged {counted(done.points, 'interval')} to {done.updated} of {counted(done.runs, 'member run')} "
               f"in group {done.group} of W&B project {project}{best}" + ("; the experiment has ended" if done.ended
                                                                          else ""))
    if offline:
        click.echo(f"offline runs in {done.folder}; upload them: {command('wandb', 'sync', '--sync-all')} there",
                   err=True)

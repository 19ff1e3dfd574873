"""The `hopt` command line: parsing and formatting only; the work lives in the modules below it.

The commands that run an experiment are here; those that read one are in results.py, those that export
it elsewhere in exports.py, and the text they print in views.py."""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import cloudpickle

from hopt_cli import intervallog, launch, settings
from hopt_cli.cli import exports, results, views
from hopt_cli.cli.options import DIR
from hopt_cli.doctor import diagnose
from hopt_cli.errors import HoptError, Interrupted, command
from hopt_cli.launch import create, enter_project
from hopt_cli.progress import ProgressLine
from hopt_cli.recipe import LOCK_KINDS
from hopt_cli.signals import PREEMPTION_SIGNALS, StopSignals
from hopt_cli.slurm import (SbatchOptions, SlurmEnvironment, check_requeue, node_local_warning, our_bin,
                            requeue_after_poisoning, requeue_if_preempted, submit, worker_command, write_sbatch)
from hopt_cli.store import Store
from hopt_cli.text import counted
from hopt_cli.worker import ProcessPoisoned, Worker


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
    click.echo(f"{root}: " + ", ".join(f"{k}={views.setting(v)}" for k, v in changes.items())
               + ("; running workers take it up at their next claim" if changed else " already; nothing to do"))


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


for _command in (results.status, results.best, results.replay_command, results.log, exports.plot,
                 exports.tensorboard_command, exports.export_command, exports.mlflow_command, exports.wandb_command):
    cli.add_command(_command)


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

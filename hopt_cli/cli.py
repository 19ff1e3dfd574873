"""The `hopt` command line: parsing and formatting only; the work lives in the modules below it."""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from hopt_cli.errors import ExperimentFailed, HoptError
from hopt_cli.experiment import Experiment, Status
from hopt_cli.recipe import Recipe, load_recipe
from hopt_cli.runner import run_local
from hopt_cli.slurm import SlurmEnvironment, StopSignals
from hopt_cli.store import Store
from hopt_cli.trainable import load_trainable
from hopt_cli.worker import Worker

DIR = click.option("--dir", "root", required=True, type=click.Path(file_okay=False, path_type=Path),
                   help="The experiment directory (shared by every worker).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hopt")
def cli() -> None:
    """Population based training with ROMUL, coordinated through one shared directory."""


def _create(recipe_path: Path, root: Path) -> Store:
    """Validate the recipe completely (the trainable must import), then create the experiment."""
    recipe = load_recipe(recipe_path)
    load_trainable(recipe.worker, recipe.command)
    return Store.create(root, recipe)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@DIR
def init(recipe: Path, root: Path) -> None:
    """Create the experiment in --dir from RECIPE (a no-op if it exists with the same recipe)."""
    store = _create(recipe, root)
    click.echo(f"experiment {store.recipe.name} ready in {root}: {store.recipe.population} members x "
               f"{store.recipe.intervals} intervals, policy {store.recipe.policy_name}")


@cli.command()
@DIR
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="Create the experiment from this recipe first if needed (safe for many workers at once).")
@click.option("--name", help="This worker's name in leases and logs [default: from SLURM, else host-pid].")
@click.option("--verbose", is_flag=True, help="Also log what each claim and commit cost: lock wait and hold.")
def worker(root: Path, recipe: Path | None, name: str | None, verbose: bool) -> None:
    """Train intervals until the experiment is complete; SIGTERM/SIGUSR1 stop it cleanly."""
    store = _create(recipe, root) if recipe else Store.open(root)
    name = name or SlurmEnvironment.from_env().worker_name or f"{socket.gethostname()}-{os.getpid()}"
    _log_to_stderr(name, logging.DEBUG if verbose else logging.INFO)
    signals = StopSignals()
    signals.install()
    try:
        report = Worker(store, name, stop=signals).run()
    finally:
        signals.restore()
    how = f"stopped by {signals.signal_name}" if report.stopped else "experiment complete"
    logging.getLogger("hopt").info("%s: %d intervals committed, %d failed, %d discarded", how, report.commits,
                                   report.failures, report.fenced)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@DIR
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Local worker processes.")
def run(recipe: Path, root: Path, workers: int) -> None:
    """Run the experiment on this machine with local workers; run it again to resume."""
    store = _create(recipe, root)
    click.echo(f"{store.recipe.name}: {workers} workers on {root} (logs in {store.paths.logs})", err=True)
    result = run_local(store, workers, _progress_printer())
    if result.interrupted:
        click.echo("stopped; run the same command again to resume", err=True)
        sys.exit(130)
    if result.failed:
        raise ExperimentFailed(result.failed)
    if not result.complete:
        bad = ", ".join(f"{n} (status {c}, see {store.paths.log(n)})" for n, c in result.exit_codes.items() if c)
        raise ExperimentFailed(f"workers stopped before the experiment was complete: {bad or 'none failed'}")
    best = Experiment(root).best()
    click.echo(f"done: best {store.recipe.objective.metric} {best.score:.6g} (member {best.member}, "
               f"interval {best.interval}); export it with `hopt best --dir {root} --out DIR`")


def _progress_printer() -> Any:
    tty = sys.stderr.isatty()

    def show(done: int, total: int, note: str) -> None:
        width = 30
        filled = width * done // max(total, 1)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} intervals  {note}"
        click.echo(f"\r{line}" if tty else line, err=True, nl=not tty or done == total)

    return show


@cli.command()
@DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
def status(root: Path, as_json: bool) -> None:
    """Progress, best score, and per member: interval, score, hyperparameters, lease."""
    report = Experiment(root).status()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(_status_table(report))


def _status_table(s: Status) -> str:
    head = f"{s.name}: {s.done}/{s.total} intervals ({100 * s.done / s.total:.0f}%), policy {s.policy}"
    if s.best:
        head += f", best {s.metric} {s.best.score:.6g} (member {s.best.member}, interval {s.best.interval})"
    if s.complete:
        head += ", complete"
    lines = [head] + ([f"FAILED: {s.failed}"] if s.failed else [])
    names = list(s.members[0].hparams) if s.members and s.members[0].hparams else []
    rows = [["member", "interval", s.metric, *names, "sigma", "lease"]]
    for m in s.members:
        lease = "free" if m.lease is None else (
            f"{'STALE ' if m.lease.stale else ''}{m.lease.worker} ({m.lease.host}:{m.lease.pid}, {m.lease.age:.0f}s)")
        rows.append([f"{m.member}{'*' if m.explorer else ''}", str(m.interval),
                     "-" if m.score is None else f"{m.score:.5g}",
                     *(_fmt(m.hparams.get(n)) for n in names), f"{m.sigma:.3g}", lease])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if any(m.explorer for m in s.members):
        lines.append("* explorer (never copies, never changes its hyperparameters)")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@cli.command()
@DIR
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Export the checkpoint, schedule.yaml and scores.csv into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def best(root: Path, out: Path | None, as_json: bool) -> None:
    """The best interval committed so far, its score history and hyperparameter schedule."""
    experiment = Experiment(root)
    result = experiment.export_best(out) if out else experiment.best()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"best {experiment.recipe.objective.metric} {result.score:.6g}: member {result.member}, "
               f"interval {result.interval}, checkpoint {result.checkpoint}")
    for step in result.schedule:
        copied = f"  <- copied member {step.copied_from}" if step.copied_from is not None else ""
        params = " ".join(f"{k}={_fmt(v)}" for k, v in step.hparams.items())
        click.echo(f"  {step.interval:4d}  member {step.member:3d}  {step.score:10.5g}  {params}{copied}")
    if out:
        click.echo(f"exported to {out}: checkpoint/, schedule.yaml, scores.csv")


def _log_to_stderr(name: str, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s"))
    logger = logging.getLogger("hopt")
    logger.addHandler(handler)
    logger.setLevel(level)


def main() -> None:
    """Entry point: a user's mistake is one line on stderr and its exit status, never a traceback."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except HoptError as err:
        click.echo(f"hopt: error: {err}", err=True)
        sys.exit(err.exit_code)

"""The commands that read an experiment: `hopt status`, `best`, `log` and `replay`."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from hopt_cli import schedule, timeline
from hopt_cli.cli import views
from hopt_cli.cli.options import DIR
from hopt_cli.errors import HoptError, command
from hopt_cli.experiment import SCHEMA, Experiment, IntervalLog
from hopt_cli.progress import ProgressLine
from hopt_cli.retrain import check_trainable, replay
from hopt_cli.signals import StopSignals
from hopt_cli.text import shown


@click.command()
@DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/json-schemas.md).")
@click.option("--watch", is_flag=True, help="Refresh until the experiment is complete (Ctrl-C leaves).")
@click.option("--interval", "every", default=2.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes with --watch.")
@click.option("--all", "every_member", is_flag=True,
              help=f"A row for every member [default: the {views.SUMMARY_ROWS} best of a larger population].")
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
            click.echo(clear + views.status_table(report, every_member) + ("\n" if watch and not clear else ""))
    except KeyboardInterrupt:
        return


@click.command()
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
                              indent=2) if as_json else views.top_table(experiment, entries, out))
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
    click.echo("  metrics: " + " ".join(f"{k}={shown(v)}" for k, v in result.metrics.items()))
    for step in result.schedule:
        copied = f"  <- copied member {step.copied_from}" if step.copied_from is not None else ""
        params = " ".join(f"{k}={shown(v)}" for k, v in step.hparams.items())
        click.echo(f"  {step.interval:4d}  member {step.member:3d}  {step.score:10.5g}  {params}{copied}")
    if out:
        click.echo(f"exported to {out}: checkpoint/, schedule.yaml, scores.csv")


@click.command("replay")
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


@click.command()
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

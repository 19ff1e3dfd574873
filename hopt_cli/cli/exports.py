"""The commands that export an experiment elsewhere: `hopt plot`, `tensorboard`, `export`, `mlflow`, `wandb`."""
from __future__ import annotations

from pathlib import Path

import click

from hopt_cli import table, tensorboard, tracking
from hopt_cli.cli.options import DIR
from hopt_cli.errors import command
from hopt_cli.experiment import Experiment, refuse_inside_experiment
from hopt_cli.text import counted


@click.command()
@DIR
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for scores.png, schedule.png, lineage.png and sigma.png.")
def plot(root: Path, out: Path) -> None:
    """Draw the experiment: scores, the best lineage's schedule, who copied whom, step sizes."""
    from hopt_cli.plots import plot as draw

    for path in draw(Experiment(root), out):
        click.echo(path)


@click.command("tensorboard")
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


@click.command("export")
@DIR
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The table's file: FILE.csv, or FILE.parquet (needs pyarrow); written whole, replacing one there.")
def export_command(root: Path, out: Path) -> None:
    """Write the results table, one row per committed interval, with every metric and hyperparameter."""
    refuse_inside_experiment(out)
    frame = Experiment(root).dataframe()
    table.write(frame, out)
    click.echo(f"wrote {counted(len(frame), 'row')} x {counted(len(frame.columns), 'column')} to {out}")


@click.command("mlflow")
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


@click.command("wandb")
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

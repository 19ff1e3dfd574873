"""`hopt wandb`: the experiment as Weights & Biases runs, grouped: one run for the population and one per member.

The mapping is `hopt mlflow`'s (tracking.py); each member's points are logged against the metric
`interval` (W&B's own step only grows, and an exploit may take a member back to an earlier interval).
Incremental: the cursor (commits logged) and the best uploaded are kept next to W&B's own run files, in
`wandb/hopt-<journal head>.json` of its folder (WANDB_DIR, else the current one), never in the experiment.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopt_cli import tracking
from hopt_cli.errors import HoptError, RuntimeFailure
from hopt_cli.experiment import Best, Experiment
from hopt_cli.store.fsio import write_json_atomic
from hopt_cli.tracking import Point

FORMAT = 1  # of the state file


@dataclass(frozen=True)
class WandbExport:
    """What one pass did: `points` new commits logged into `updated` member runs (of `runs`); `best`: the
    member whose run got the best checkpoint as an artifact in this pass (None: unchanged)."""

    group: str
    runs: int
    updated: int
    points: int
    best: int | None
    ended: bool
    folder: Path


def export(root: str | Path, project: str, offline: bool = False) -> WandbExport:
    """Log the commits of the experiment in `root` not yet logged into the W&B project `project`."""
    wandb = tracking.require("wandb", "hopt wandb", "wandb")
    experiment = Experiment(root)
    try:
        return _Exporter(wandb, experiment, project, offline).run()
    except wandb.errors.Error as err:
        message = " ".join(str(err).split())[:500].rstrip(".")
        raise RuntimeFailure(f"W&B failed: {message}; run it again once that is fixed, or with --offline") from None


class _Exporter:
    def __init__(self, wandb: Any, experiment: Experiment, project: str, offline: bool) -> None:
        self.wandb, self.experiment, self.project = wandb, experiment, project
        self.mode = "offline" if offline else "online"
        self.head = str(experiment.store.journal.head())
        self.folder = Path(os.environ.get("WANDB_DIR") or ".").resolve()
        self.group = f"{experiment.recipe.name}-{self.head[:8]}"
        root = experiment.store.paths.root.resolve()
        if self.folder.is_relative_to(root):
            raise HoptError(f"W&B would write its run files into {self.folder}, inside the experiment directory "
                            f"{root}, which hopt manages; run hopt wandb from another folder or set WANDB_DIR")
        self.state_path = self.folder / "wandb" / f"hopt-{self.head}.json"

    def run(self) -> WandbExport:
        population = self.experiment.population()  # before the history: an ended one is then logged whole
        timeline = self.experiment.timeline()
        commits = timeline.commits
        state = self._state()
        cursor = state["projects"].get(self.project, {}).get("cursor", 0)
        if cursor > len(commits):
            raise HoptError(f"{self.state_path} says {cursor} commits were logged but the journal holds "
                            f"{len(commits)}: the journal was cut or replaced; log it into another --project")
        new = tracking.points(timeline.replayed, self.experiment.recipe.space)[cursor:]
        starts = tracking.start_hparams(commits)
        members = sorted({p.member for p in new})
        for member in members:
            self._log(member, starts[member], [p for p in new if p.member == member])
        best = self._best(population, state["projects"].get(self.project, {}).get("best"))
        ended = population.complete or population.failed is not None or population.stopped is not None
        if new or best is not None:
            self._population(population, len(commits))
        uploaded = best.checkpoint.name if best is not None else state["projects"].get(self.project, {}).get("best")
        self._save({**state, "projects": {**state["projects"], self.project: {"cursor": len(commits),
                                                                               "best": uploaded}}})
        return WandbExport(self.group, len(starts), len(members), len(new), None if best is None else best.member,
                           ended, self.folder / "wandb")

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_bytes())
            if state["format"] != FORMAT or not isinstance(state["projects"], dict):
                raise ValueError(f"format {state['format']}, this hopt reads {FORMAT}")
        except FileNotFoundError:
            return {"format": FORMAT, "experiment": str(self.experiment.store.paths.root.resolve()), "projects": {}}
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise HoptError(f"{self.state_path}: not a state file of `hopt wandb` ({err}); delete it to log the "
                            "experiment again from its start") from None
        return state

    def _save(self, state: dict[str, Any]) -> None:
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.state_path, state)
        except OSError as err:
            raise HoptError(f"cannot write {self.state_path}: {err.strerror or err}; run hopt wandb where "
                            "W&B's folder (WANDB_DIR) is writable") from None

    def _init(self, name: str, job_type: str, config: dict[str, Any]) -> Any:
        """Start (or resume) the run `name` of this experiment's group."""
        return self.wandb.init(project=self.project, group=self.group, name=name, id=f"{self.head}-{name}",
                               job_type=job_type, config=config, resume="allow", mode=self.mode,
                               dir=str(self.folder), reinit="finish_previous",
                               settings=self.wandb.Settings(silent=True, console="off"))

    def _log(self, member: int, hparams: dict[str, Any], points: list[Point]) -> None:
        """Each point against `interval`; an exploit as `pbt/exploit_from` (the parent member), the text
        `pbt/exploit` naming the parent and the mutation, and the run's tag `exploited`."""
        run = self._init(tracking.run_name(member), "member", hparams)
        run.define_metric("interval")
        run.define_metric("*", step_metric="interval")
        for p in points:
            row: dict[str, Any] = {"interval": p.interval, **p.values}
            if p.exploit is not None:
                row.update({"pbt/exploit_from": p.exploit.parent, "pbt/exploit": p.exploit.text})
                run.tags = tuple(sorted({*run.tags, "exploited"}))
            run.log(row)
        run.finish()

    def _best(self, population: Any, uploaded: str | None) -> Best | None:
        """Log the best interval's export (checkpoint/, schedule.yaml, scores.csv) as a model artifact of its
        member's run when the best has changed since the last pass."""
        if not population.best or population.best[0].checkpoint == uploaded:
            return None
        with tracking.exported_best(self.experiment) as (best, paths):
            artifact = self.wandb.Artifact(f"{self.group}-best", type="model", metadata={
                "member": best.member, "interval": best.interval, "score": best.score})
            for path in paths:
                if path.is_dir():
                    artifact.add_dir(str(path), name=path.name)
                else:
                    artifact.add_file(str(path), name=path.name)
            run = self._init(tracking.run_name(best.member), "member", {})
            run.log_artifact(artifact, aliases=["best", "latest"])
            run.finish()
        return best

    def _population(self, population: Any, cursor: int) -> None:
        """The population's run: the recipe's settings as config, the cursor and the best in its summary."""
        recipe = self.experiment.recipe
        run = self._init("population", "population", {
            "population": recipe.population, "intervals": recipe.intervals, "policy": recipe.policy.name,
            "metric": recipe.objective.metric, "mode": recipe.objective.mode, "seed": recipe.seed,
            "hopt_dir": str(self.experiment.store.paths.root.resolve())})
        top = population.best[0] if population.best else None
        run.summary.update({"hopt/cursor": cursor, "hopt/intervals_done": population.intervals_done,
                            **({"best/member": top.member, "best/interval": top.interval, "best/score": top.score}
                               if top is not None else {})})
        run.finish(exit_code=1 if population.failed else 0)

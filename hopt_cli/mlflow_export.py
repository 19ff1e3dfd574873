"""`hopt mlflow`: the experiment as MLflow runs, a parent run for the population and a child run per member.

Incremental: the parent run, found by the journal's head hash, keeps in its tag `hopt.cursor` how many
commits are logged; an export logs the ones past it, then moves it. Nothing is written into the experiment
directory. A pass cut short logs its points again the next time, with the same step, timestamp and value.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hopt_cli import tracking
from hopt_cli.errors import HoptError, RuntimeFailure
from hopt_cli.experiment import Experiment
from hopt_cli.tracking import Point

JOURNAL, ROLE, MEMBER, CURSOR, BEST = "hopt.journal", "hopt.role", "hopt.member", "hopt.cursor", "hopt.best"
METRICS_PER_BATCH, TAGS_PER_BATCH = 1000, 100  # MLflow's limits on one log_batch


@dataclass(frozen=True)
class MlflowExport:
    """What one pass did: `points` new commits logged, into `updated` of the `runs` member runs; `best`:
    the member whose run got the best checkpoint's artifacts in this pass (None: the best had not changed)."""

    experiment_id: str
    parent_run: str
    runs: int
    updated: int
    points: int
    best: int | None
    ended: bool


def export(root: str | Path, tracking_uri: str | None = None, name: str | None = None) -> MlflowExport:
    """Log the commits of the experiment in `root` not yet logged into the MLflow experiment `name`
    (the recipe's name where None) at `tracking_uri` (MLflow's default, MLFLOW_TRACKING_URI, where None)."""
    mlflow = tracking.require("mlflow", "hopt mlflow", "mlflow")
    experiment = Experiment(root)
    try:
        return _Exporter(experiment, tracking_uri, name or experiment.recipe.name).run()
    except mlflow.exceptions.MlflowException as err:
        message = " ".join(str(err.message).split())[:500].rstrip(".")
        raise RuntimeFailure(f"MLflow at {tracking_uri or mlflow.get_tracking_uri()} refused or failed: {message}; "
                             "check --tracking-uri and that the server is up, then run it again") from None


class _Exporter:
    def __init__(self, experiment: Experiment, tracking_uri: str | None, name: str) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.experiment = experiment
        self.name = name
        self.head = experiment.store.journal.head()
        uri = tracking_uri or mlflow.get_tracking_uri()  # MLflow's default: sqlite:///mlflow.db, here
        self._refuse_inside(_local_path(uri), f"MLflow's tracking store {uri}",
                            "run hopt mlflow from another folder or give a --tracking-uri outside it")
        self.client = MlflowClient(uri)

    def _refuse_inside(self, path: Path | None, what: str, fix: str) -> None:
        """Refuse to write at `path` (None: not on this machine's filesystem) inside the experiment directory."""
        root = self.experiment.store.paths.root.resolve()
        if path is not None and path.resolve().is_relative_to(root):
            raise HoptError(f"{what} is inside the experiment directory {root}, which hopt manages; {fix}")

    def run(self) -> MlflowExport:
        population = self.experiment.population()  # before the history: an ended one is then logged whole
        timeline = self.experiment.timeline()
        commits = timeline.commits
        experiment_id = self._experiment_id()
        parent = self._parent(experiment_id, commits)
        cursor = int(parent.data.tags.get(CURSOR, "0"))
        if cursor > len(commits):
            raise HoptError(f"MLflow run {parent.info.run_id} logged {cursor} commits of this experiment but its "
                            f"journal holds {len(commits)}: the journal was cut or replaced; export into another "
                            "--experiment")
        new = tracking.points(timeline.replayed, self.experiment.recipe.space)[cursor:]
        runs = self._member_runs(parent.info.run_id)
        starts = tracking.start_hparams(commits)
        for member in sorted({p.member for p in new} - runs.keys()):
            runs[member] = self._member_run(experiment_id, parent.info.run_id, member, starts[member], new)
        for member in sorted({p.member for p in new}):
            self._log(runs[member], [p for p in new if p.member == member])
        best = self._best(parent, runs, population)
        self.client.set_tag(parent.info.run_id, CURSOR, str(len(commits)))
        ended = population.complete or population.failed is not None or population.stopped is not None
        if ended:
            end = _ms(commits[-1].time) if commits else None
            for run_id in [*runs.values(), parent.info.run_id]:
                self.client.set_terminated(run_id, "FAILED" if population.failed else "FINISHED", end_time=end)
        return MlflowExport(experiment_id, parent.info.run_id, len(runs), len({p.member for p in new}), len(new),
                            best, ended)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.name)
        if found is None:
            found = self.client.get_experiment(self.client.create_experiment(self.name))
        if found.lifecycle_stage != "active":
            raise HoptError(f"the MLflow experiment {self.name!r} is deleted; restore it (mlflow experiments restore) "
                            "or name another with --experiment")
        self._refuse_inside(_local_path(found.artifact_location), f"the artifact store of MLflow experiment "
                            f"{self.name!r}, {found.artifact_location},", "run hopt mlflow from another folder "
                            "(MLflow's default artifact store is ./mlruns) and name a new --experiment")
        return found.experiment_id

    def _parent(self, experiment_id: str, commits: Sequence[Any]) -> Any:
        """The population's run for this journal, created (with the recipe's settings as params) if new."""
        found = self.client.search_runs([experiment_id], f"tags.`{JOURNAL}` = '{self.head}' and "
                                        f"tags.`{ROLE}` = 'population'", max_results=1)
        if found:
            return found[0]
        recipe = self.experiment.recipe
        run = self.client.create_run(
            experiment_id, start_time=_ms(commits[0].time) if commits else None, run_name=recipe.name,
            tags={JOURNAL: str(self.head), ROLE: "population", CURSOR: "0",
                  "hopt.dir": str(self.experiment.store.paths.root.resolve())})
        self._params(run.info.run_id, {"population": recipe.population, "intervals": recipe.intervals,
                                       "policy": recipe.policy.name, "metric": recipe.objective.metric,
                                       "mode": recipe.objective.mode, "seed": recipe.seed})
        return self.client.get_run(run.info.run_id)

    def _member_runs(self, parent_id: str) -> dict[int, str]:
        found = self.client.search_runs([self.client.get_run(parent_id).info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=50000)
        return {int(run.data.tags[MEMBER]): run.info.run_id for run in found if MEMBER in run.data.tags}

    def _member_run(self, experiment_id: str, parent_id: str, member: int, hparams: dict[str, Any],
                    new: list[Point]) -> str:
        first = next(p for p in new if p.member == member)
        run = self.client.create_run(experiment_id, start_time=_ms(first.time), run_name=tracking.run_name(member),
                                     tags={"mlflow.parentRunId": parent_id, JOURNAL: str(self.head),
                                           ROLE: "member", MEMBER: str(member)})
        self._params(run.info.run_id, hparams)
        return run.info.run_id

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _log(self, run_id: str, points: list[Point]) -> None:
        """Each point's values at step = interval; an exploit as `pbt/exploit_from` (the parent member) and
        a tag `hopt.exploit.<interval>` whose text names the parent and the mutation."""
        from mlflow.entities import Metric, RunTag

        metrics, tags = [], []
        for p in points:
            stamp = _ms(p.time)
            metrics += [Metric(key, value, stamp, p.interval) for key, value in p.values.items()]
            if p.exploit is not None:
                metrics.append(Metric("pbt/exploit_from", float(p.exploit.parent), stamp, p.interval))
                tags.append(RunTag(f"hopt.exploit.{p.interval:04d}", p.exploit.text))
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])
        for i in range(0, len(tags), TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=tags[i:i + TAGS_PER_BATCH])

    def _best(self, parent: Any, runs: dict[int, str], population: Any) -> int | None:
        """Upload the best interval's export (checkpoint/, schedule.yaml, scores.csv) under `best/` in its
        member's run when the best has changed since the last pass; the parent's tags name it."""
        if not population.best or population.best[0].checkpoint == parent.data.tags.get(BEST):
            return None
        with tracking.exported_best(self.experiment) as (best, paths):
            if best.member not in runs:  # committed after this pass read the history: the next pass uploads it
                return None
            for path in paths:
                if path.is_dir():
                    self.client.log_artifacts(runs[best.member], str(path), f"best/{path.name}")
                else:
                    self.client.log_artifact(runs[best.member], str(path), "best")
            self.client.set_tag(runs[best.member], "hopt.best_interval", str(best.interval))
            for key, value in {BEST: best.checkpoint.name, "hopt.best_member": best.member,
                               "hopt.best_interval": best.interval, "hopt.best_score": best.score}.items():
                self.client.set_tag(parent.info.run_id, key, str(value))
        return best.member


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _local_path(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (a path, file:, sqlite:); None for a remote one."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme in ("", "file") else None

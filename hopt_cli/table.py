"""The results table: one row per committed interval, with its metrics and hyperparameters, as a pandas
DataFrame (`Experiment(D).dataframe()`) or a CSV or Parquet file (`hopt export`).

pandas and pyarrow are an optional extra (`table`); a missing one is a one-line error naming the install.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hopt_cli.errors import HoptError
from hopt_cli.store.fsio import write_atomic
from hopt_cli.timeline import Event, TrainedInterval

COLUMNS = ("member", "interval", "action", "parent", "worker", "time", "duration", "score")
METRIC, HPARAM = "metrics/", "hparams/"  # prefixes of the metric and hyperparameter columns
FORMATS = {".csv": "pandas", ".parquet": "pyarrow"}  # an --out's suffix -> the package that writes it


def rows(commits: Iterable[TrainedInterval], journal: Iterable[Event]) -> list[dict[str, Any]]:
    """One row per commit, in journal order; `duration` runs from the interval's claim to its commit.

    The claim a commit ends is the latest claim of its member interval before it: a lease's token fences
    every commit, so an earlier claim of that interval (failed or reclaimed) never commits. `journal`'s
    commits are `commits`, in the same order."""
    claimed: dict[tuple[int | None, int | None], float] = {}
    durations: list[float | None] = []
    for event in journal:
        if event.kind == "claim":
            claimed[event.member, event.interval] = event.time
        elif event.kind == "commit":
            since = claimed.get((event.member, event.interval))
            durations.append(None if since is None else round(event.time - since, 6))
    return [{"member": c.member, "interval": c.interval, "action": c.action, "parent": c.parent, "worker": c.worker,
             "time": c.time, "duration": duration, "score": c.score, **{METRIC + k: v for k, v in c.metrics.items()},
             **{HPARAM + k: v for k, v in c.hparams.items()}}
            for c, duration in zip(commits, durations, strict=True)]


def dataframe(table: list[dict[str, Any]]) -> Any:
    """The rows as a pandas DataFrame: `time` a UTC timestamp, `parent` a nullable integer."""
    pandas = require("pandas", "the results table")
    frame = pandas.DataFrame(table, columns=_columns(table))
    frame["time"] = pandas.to_datetime(frame["time"], unit="s", utc=True)
    frame["parent"] = frame["parent"].astype("Int64")
    return frame


def _columns(table: list[dict[str, Any]]) -> list[str]:
    """The fixed columns, then every metric, then every hyperparameter, each in first-seen order."""
    seen = dict.fromkeys(k for row in table for k in row if k not in COLUMNS)
    return [*COLUMNS, *(k for k in seen if k.startswith(METRIC)), *(k for k in seen if k.startswith(HPARAM))]


def write(frame: Any, out: Path) -> None:
    """Write the table to `out`, a .csv or .parquet file, whole or not at all (a temporary file renamed)."""
    package = FORMATS.get(out.suffix.lower())
    if package is None:
        raise HoptError(f"--out {out}: hopt export writes a .csv or a .parquet file; name one of those")
    require(package, f"hopt export --out {out.name}")
    data = frame.to_parquet(None, index=False) if package == "pyarrow" else frame.to_csv(index=False).encode()
    try:
        write_atomic(out, data)
    except OSError as err:
        raise HoptError(f"cannot write {out}: {err.strerror or err}; choose an --out you can write to") from None


def require(package: str, what: str) -> Any:
    """Import an optional package of the `table` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise HoptError(f"{what} needs {package}: pip install pandas pyarrow (or, in hopt's folder, "
                        "pip install -e '.[table]')") from None

"""The results table: `Experiment.dataframe()` holds one row per journal commit with its claim-to-commit
duration, `hopt export` writes the same table as CSV and Parquet, and wrong uses are one line, exit 2."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hopt_cli.events import Claim, Commit
from hopt_cli.experiment import Experiment
from hopt_cli.store import Store
from hopt_cli.store.journal import Cursor
from tests.commands import hopt
from tests.conftest import REPO

needs_pandas = pytest.mark.skipif(importlib.util.find_spec("pandas") is None or
                                  importlib.util.find_spec("pyarrow") is None,
                                  reason="pandas and pyarrow are not installed (pip install -e '.[table]')")


@needs_pandas
def test_the_dataframe_holds_every_commit_of_the_journal(quadratic):
    import pandas

    found, _ = Store.open(quadratic).read_events(Cursor())
    claims = {e.token: e for e in found if isinstance(e, Claim)}
    commits = [e for e in found if isinstance(e, Commit)]

    frame = Experiment(quadratic).dataframe()

    assert len(frame) == len(commits) > 5  # adopted lineages are not trained again: no row
    assert {"exploit", "continue", "start"} == set(frame["action"])
    for row, c in zip(frame.to_dict("records"), commits):
        assert (row["member"], row["interval"], row["action"], row["worker"], row["score"]) == \
            (c.member, c.interval, c.decision.action, c.worker, c.score)
        assert (None if pandas.isna(row["parent"]) else row["parent"]) == c.decision.parent
        assert row["time"].timestamp() == pytest.approx(c.time, abs=1e-6)  # datetime64[ns] keeps microseconds
        assert row["duration"] == pytest.approx(c.time - claims[c.token].time, abs=1e-6)  # its own claim; in µs
        assert {k: row[f"metrics/{k}"] for k in c.metrics} == c.metrics
        assert {k: row[f"hparams/{k}"] for k in c.hparams} == c.hparams


@needs_pandas
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_the_same_table(quadratic, tmp_path, suffix):
    import pandas

    out = tmp_path / f"results{suffix}"
    done = hopt("export", "--dir", str(quadratic), "--out", str(out))

    assert done.returncode == 0, done.stderr
    frame = Experiment(quadratic).dataframe()
    assert done.stdout.strip() == f"wrote {len(frame)} rows x {len(frame.columns)} columns to {out}"
    back = pandas.read_parquet(out) if suffix == ".parquet" else pandas.read_csv(out, parse_dates=["time"])
    assert list(back.columns) == list(frame.columns)
    assert back["score"].tolist() == frame["score"].tolist()  # CSV prints floats with repr: they round-trip
    assert back["parent"].fillna(-1).astype(int).tolist() == frame["parent"].fillna(-1).tolist()
    assert [t.timestamp() for t in back["time"]] == pytest.approx([t.timestamp() for t in frame["time"]], abs=1e-6)


@pytest.mark.parametrize("out, problem", [("results.xlsx", "writes a .csv or a .parquet file"),
                                          ("INSIDE/results.csv", "is inside the experiment directory")])
def test_a_wrong_out_is_one_line(quadratic, tmp_path, out, problem):
    target = out.replace("INSIDE", str(quadratic)) if out.startswith("INSIDE") else str(tmp_path / out)
    if importlib.util.find_spec("pandas") is None and not out.startswith("INSIDE"):
        pytest.skip("without pandas the missing extra is the first thing said")

    done = hopt("export", "--dir", str(quadratic), "--out", target)

    assert done.returncode == 2
    assert problem in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not Path(target).exists()


def test_a_missing_extra_is_one_line_naming_the_install(quadratic, tmp_path):
    """pandas made unimportable, as where the `table` extra is not installed."""
    shadow = tmp_path / "shadow" / "pandas"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named pandas')\n")
    out = tmp_path / "results.csv"

    done = hopt("export", "--dir", str(quadratic), "--out", str(out),
                env={"PYTHONPATH": f"{shadow.parent}:{REPO}"})

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hopt: error: the results table needs pandas: pip install pandas pyarrow (or, in hopt's folder, "
        "pip install -e '.[table]')"]
    assert not out.exists()

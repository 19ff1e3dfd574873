"""Every --json document has exactly the keys docs/json-schemas.md documents, with the documented types."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from hopt_cli.cli import cli
from tests.conftest import REPO
from tests.hopt_cli.conftest import mid_run

TYPES = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "object": dict, "array": list}


def documented() -> dict[str, dict[str, str]]:
    """{section path: {key: type}} from the tables under each `### path` heading of the doc."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in (REPO / "docs" / "json-schemas.md").read_text().splitlines():
        if line.startswith("### "):
            current = sections.setdefault(line[4:].strip(), {})
        row = re.match(r"\| `(\w+)` \| ([a-z ]+) \|", line)
        if row and current is not None:
            current[row[1]] = row[2]
    return sections


def objects(document: dict, path: str) -> list[dict]:
    """The objects a section path names: `status.members[].lease` is every member's lease that is set."""
    found = [document]
    for part in path.split(".")[1:]:
        key, many = part.removesuffix("[]"), part.endswith("[]")
        values = [o[key] for o in found if o[key] is not None]
        found = [item for value in values for item in value] if many else values
    return found


def check(document: dict, root: str, absent: tuple[str, ...] = ()) -> None:
    """Check every section of `root`; each must be present in `document` unless listed in `absent`."""
    sections = {path: keys for path, keys in documented().items() if path.split(".")[0] == root}
    assert sections, f"no section {root} in the doc"
    for path, keys in sections.items():
        found = objects(document, path)
        assert found or path in absent, f"the test's document has no {path} to check"
        for obj in found:
            assert set(obj) == set(keys), f"{path}: keys differ from the doc"
            for key, kind in keys.items():
                value = obj[key]
                if value is None:
                    assert kind.endswith(" or null"), f"{path}.{key} is null but documented as {kind}"
                    continue
                python = TYPES[kind.removesuffix(" or null")]
                assert isinstance(value, python) and not (isinstance(value, bool) and python is int), \
                    f"{path}.{key} = {value!r} is not {kind}"
    assert document["schema"] == 2


def run(*args: str) -> dict:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_doc_covers_every_command():
    assert {"status", "status.best", "status.members[]", "status.members[].lease", "best", "best.schedule[]",
            "top", "log", "log.events[]"} <= set(documented())


def test_status_json_finished_and_mid_run(quadratic, tmp_path):
    mid_run(tmp_path / "exp")
    finished = run("status", "--dir", str(quadratic), "--json")
    running = run("status", "--dir", str(tmp_path / "exp"), "--json")

    check(running, "status")
    check(finished, "status", absent=("status.members[].lease",))
    assert all(m["lease"] is None for m in finished["members"])
    assert running["eta"] > 0 and running["live_workers"] == ["pytest-worker"]


@pytest.mark.parametrize("args", [[], ["--member", "2"]])
def test_best_json(quadratic, args):
    check(run("best", "--dir", str(quadratic), "--json", *args), "best")


def test_top_json(quadratic):
    document = run("best", "--dir", str(quadratic), "--json", "--top", "3")

    check(document, "top")
    assert len(document["top"]) == 3
    for entry in document["top"]:
        check(entry, "best")


def test_log_json(ellipsoid):
    document = run("log", "--dir", str(ellipsoid), "--json")

    check(document, "log")
    changes = [c for e in document["events"] for c in e["changes"]]
    assert changes and all(set(c) == {"name", "old", "new"} for c in changes)
    assert len(document["events"]) == len((ellipsoid / "journal.jsonl").read_text().splitlines())

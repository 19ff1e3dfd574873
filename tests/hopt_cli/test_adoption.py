"""Adoption of a finished lineage in a real run: only ever of a final model better than the adopter's own.

T5 (workers.toys:peak_then_decay) peaks after 3 intervals and then loses 0.15 per interval, so a finished
lineage ends worse than it was at the training time at which a member behind it is compared with it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopt_cli.store import Store
from tests.conftest import toy_recipe
from tests.hopt_cli.conftest import hopt, run_to_completion

T5 = {"worker": "workers.toys:peak_then_decay", "space": {"h": {"type": "float", "low": 0.0, "high": 1.0}}}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_members_added_by_extend_adopt_no_finished_lineage_worse_than_their_own(tmp_path: Path, seed: int):
    root = run_to_completion(tmp_path / "exp", toy_recipe(seed=seed, population=4, intervals=6, **T5))
    grown = hopt("extend", "--dir", str(root), "--population", "8")
    again = hopt("run", str(root.with_suffix(".yaml")), "--dir", str(root), "--workers", "2")

    assert grown.returncode == 0 and again.returncode == 0, grown.stderr + again.stderr
    latest: dict[int, float] = {}
    adopted: dict[int, float] = {}
    for event in Store.open(root).journal.read()[0]:
        if event["type"] == "commit":
            latest[event["member"]] = event["score"]
        elif event["type"] == "adopt":
            assert event["score"] > latest[event["member"]], f"member {event['member']} adopted a worse model"
            adopted[event["member"]] = latest[event["member"]] = event["score"]
    for member in range(4, 8):  # the new members; `best --member` hands out what each ended with
        shown = json.loads(hopt("best", "--dir", str(root), "--member", str(member), "--json").stdout)
        assert shown["score"] == latest[member]
        assert member not in adopted or shown["score"] == adopted[member]

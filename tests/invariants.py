"""The directory invariants of DESIGN.md, checked on a finished experiment (end-to-end, chaos, SLURM)."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hopt_cli.store import Store
from hopt_cli.store.fsio import is_temporary


@dataclass(frozen=True)
class Summary:
    commits: int
    claims: int
    reclaims: int
    releases: int
    failures: int
    checkpoints_on_disk: int


def check_finished_experiment(root: Path) -> Summary:
    """Assert every invariant of a completed experiment and return what its journal holds."""
    store = Store.open(root)
    population = store.sync()
    recipe = store.recipe
    events = store.journal.read()[0]
    assert store.rebuild() == population, "snapshot + tail differs from a full replay"

    assert population.complete and population.failed is None
    for member in population.members:  # the budget as the journal has it: `hopt extend` may have grown it
        assert member.interval == population.intervals
        assert len(member.lineage.scores) == population.intervals

    commits = [e for e in events if e["type"] == "commit"]
    claims = {e["token"]: e for e in events if e["type"] == "claim"}
    tokens = Counter(e["token"] for e in commits)
    assert all(n == 1 for n in tokens.values()), "a lease token committed twice"
    pairs = Counter((e["member"], e["interval"]) for e in commits)
    assert all(n == 1 for n in pairs.values()), "a member interval committed twice"
    last_interval: dict[int, int] = {}
    committed: set[str] = set()
    intervals = recipe.intervals  # the budget at each event
    for event in events:
        if event["type"] == "extend":
            assert event["intervals"] >= intervals, "an extend shrank the experiment"
            intervals = event["intervals"]
        if event["type"] == "adopt":
            assert event["interval"] == intervals, "a member took over an unfinished lineage"
            assert event["checkpoint"] in committed, f"adopted uncommitted checkpoint {event['checkpoint']}"
            last_interval[event["member"]] = event["interval"] - 1  # the lineage it took over ends there
        if event["type"] != "commit":
            continue
        claim = claims[event["token"]]
        assert (claim["member"], claim["interval"]) == (event["member"], event["interval"])
        previous = last_interval.get(event["member"], -1)
        if event["decision"]["action"] == "exploit":
            assert event["interval"] > previous, "a lineage went back in time"
        else:
            assert event["interval"] == previous + 1, "an interval was skipped or repeated"
        last_interval[event["member"]] = event["interval"]
        parent = event["decision"]["checkpoint"]
        assert parent is None or parent in committed, f"commit resumed from uncommitted checkpoint {parent}"
        committed.add(event["checkpoint"])

    referenced = population.referenced_checkpoints()
    for name in referenced:
        checkpoint = store.paths.checkpoint(name)
        assert checkpoint.is_dir(), f"referenced checkpoint {name} is missing"
        for file in checkpoint.glob("*.json"):
            json.loads(file.read_text())
    on_disk = {p.name for p in store.paths.checkpoints.iterdir()}
    assert on_disk == referenced, f"unreferenced checkpoints left: {sorted(on_disk - referenced)}"
    assert len(on_disk) <= population.size + recipe.keep_best
    if store.paths.interval_logs.exists():
        kept = {p.name.removesuffix(".log") for p in store.paths.interval_logs.iterdir() if not is_temporary(p.name)}
        assert kept <= referenced, f"interval logs left of collected checkpoints: {sorted(kept - referenced)}"
    assert not list(store.paths.leases.iterdir()), "leases left after completion"
    assert not list(store.paths.staging.iterdir()), "staging folders left after completion"
    count = Counter(e["type"] for e in events)
    return Summary(count["commit"], count["claim"], count["reclaim"], count["release"], count["fail"], len(on_disk))

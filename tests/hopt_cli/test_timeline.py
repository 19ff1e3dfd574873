"""The journal read once: each event kind has one reader and a documented row; the replay's records
(exploit diffs, the checkpoint copied, every attempt's end) are the same however the events arrive."""
from __future__ import annotations

import re

from hopt_cli import events
from hopt_cli.decision import Decision
from hopt_cli.events import Adopt, Claim, Commit, Extend, Fail, Reclaim, Release, Retry, Set, Stop
from hopt_cli.population import Population
from hopt_cli.timeline import READERS, Change, Timeline, describe
from tests.conftest import REPO


def decision(action: str, parent: int | None, checkpoint: str | None, interval: int) -> Decision:
    return Decision(action, parent, checkpoint, interval, (0.5,), 0.1, 0, False)


def trained(member: int, interval: int, token: str, hparams: dict, score: float, made_from: Decision) -> list:
    """A claim of the member interval and its commit."""
    return [Claim(member=member, token=token, decision=made_from, hparams=hparams, worker="w", time=1.0),
            Commit(member=member, token=token, decision=made_from, hparams=hparams, score=score, worker="w",
                   checkpoint=f"m{member:05d}-i{interval:05d}-{token}", metrics={"loss": -score}, time=2.0)]


START = decision("start", None, None, 0)
COPY = decision("exploit", 1, "m00001-i00000-b", 1)  # member 1's first checkpoint
JOURNAL = [  # member 1 trains interval 0; member 0 copies it, fails, is reclaimed, then commits; 2 adopts 0's
    *trained(1, 0, "b", {"lr": 0.5, "opt": "sgd"}, 0.9, START),
    Claim(member=0, token="t0", decision=COPY, hparams={"lr": 0.25, "opt": "sgd"}, worker="w", time=3.0),
    Fail(member=0, interval=1, token="t0", reason="RuntimeError: boom", worker="w", time=4.0),
    Claim(member=0, token="t1", decision=COPY, hparams={"lr": 0.25, "opt": "sgd"}, attempt=1, worker="w", time=5.0),
    Reclaim(member=0, interval=1, token="t1", reason="no heartbeat", holder="w", worker="v", time=6.0),
    Retry(worker="hopt-retry", time=7.0),
    Set(settings={"max_failures": 5, "stop": None}, worker="hopt-set", time=7.5),
    *trained(0, 1, "t2", {"lr": 0.25, "opt": "adam"}, 0.95, COPY),
    Adopt(member=2, token="a", decision=decision("exploit", 0, "m00000-i00001-t2", 2), hparams={"lr": 0.25},
          checkpoint="m00000-i00001-t2", score=0.95, worker="v", time=9.0),
    Extend(population=4, intervals=3, worker="hopt-extend", time=10.0),
    Stop(reason="stop.hours: 1.00 h since the first claim (the limit is 1 h)", worker="v", time=10.5),
    Claim(member=3, token="t3", decision=START, hparams={"lr": 0.1, "opt": "sgd"}, worker="v", time=11.0),
    Release(member=3, interval=0, token="t3", reason="stop requested", worker="v", time=12.0),
]


def replayed(found: list) -> Timeline:
    timeline = Timeline()
    timeline.extend(found)
    return timeline


def test_every_event_kind_has_its_readers_and_a_documented_row():
    """Adding a kind to hopt_cli/events.py means a reader in timeline.py, a row in the docs and an event of it
    in JOURNAL above (and a handler in population.py if it changes the workers' state): this fails until all
    are there."""
    schemas = (REPO / "docs" / "json-schemas.md").read_text()
    row = next(line for line in schemas[schemas.index("### log.events[]"):].splitlines()
               if line.startswith("| `kind` |"))
    population = Population(size=3, intervals=2)

    assert set(READERS) == set(events.KINDS.values())
    assert set(events.KINDS) <= set(re.findall(r"`(\w+)`", row))
    assert {type(e) for e in JOURNAL} == set(events.KINDS.values())
    assert [e.kind for e in replayed(JOURNAL).entries] == [e.kind for e in JOURNAL]
    for event in JOURNAL:
        population.apply(event)
    assert (population.events, population.size, population.members[2].checkpoint) == (
        len(JOURNAL), 4, "m00000-i00001-t2")


def test_an_exploit_is_diffed_once_against_the_checkpoint_it_copied():
    timeline = replayed(JOURNAL)
    claim, commit = (next(r for r in timeline.replayed if (r.event.kind, getattr(r.event, "token", None)) == key)
                     for key in (("claim", "t0"), ("commit", "t2")))
    parent = timeline.commits[0]

    assert claim.copied == commit.copied == parent and parent.checkpoint == "m00001-i00000-b"
    assert claim.entry.changes == (Change("lr", 0.5, 0.25),)
    assert commit.entry.changes == (Change("lr", 0.5, 0.25), Change("opt", "sgd", "adam"))
    assert commit.trained == timeline.commits[1] and commit.trained.parent_checkpoint == parent.checkpoint
    assert describe(claim.entry) == "member 0 \u2190 member 1 (interval 1): lr 0.5 \u2192 0.25"
    assert describe(commit.entry) == "member 0 interval 1: score 0.95 (exploit of member 1)"


def test_an_exploit_of_a_checkpoint_the_journal_never_committed_copies_nothing():
    lost = Claim(member=0, token="t", decision=decision("exploit", 1, "m00001-i00007-gone", 8), hparams={"lr": 1.0})

    (record,) = replayed([lost]).replayed

    assert record.copied is None and record.entry.changes == (Change("lr", None, 1.0),)


def test_an_adopt_takes_over_the_commit_of_its_checkpoint():
    timeline = replayed(JOURNAL)
    adopt = next(r for r in timeline.replayed if r.entry.kind == "adopt")

    assert adopt.copied == timeline.commits[1] and adopt.trained is None
    assert (adopt.entry.member, adopt.entry.parent, adopt.entry.score) == (2, 0, 0.95)
    assert describe(adopt.entry) == "member 2 takes over member 0's finished lineage (score 0.95)"


def test_every_attempt_at_a_member_interval_with_how_it_ended():
    timeline = replayed(JOURNAL)

    assert [(a.attempt, a.token, a.outcome, a.reason) for a in timeline.attempts(0, 1)] == [
        (0, "t0", "failed", "RuntimeError: boom"), (1, "t1", "reclaimed", "no heartbeat"), (0, "t2", "committed", None)]
    assert [(a.outcome, a.reason) for a in timeline.attempts(3, 0)] == [("released", "stop requested")]
    assert timeline.attempts(3, 1) == []
    assert [a.outcome for a in replayed(JOURNAL[:-1]).attempts(3, 0)] == ["training"]


def test_a_reclaim_names_the_dropped_worker_and_who_dropped_it():
    entries = replayed(JOURNAL).entries
    reclaim = next(e for e in entries if e.kind == "reclaim")

    assert (reclaim.worker, reclaim.by, reclaim.reason) == ("w", "v", "no heartbeat")
    assert describe(reclaim) == "member 0 interval 1: lease of w dropped by v: no heartbeat"
    assert [describe(next(e for e in entries if e.kind == kind)) for kind in ("retry", "extend", "set", "stop")] == [
        "failure counts cleared by `hopt retry`: every member may fail max_failures times again",
        "grown by `hopt extend` to 4 members x 3 intervals",
        "changed by `hopt set`: max_failures=5 stop=null",
        "stopped: stop.hours: 1.00 h since the first claim (the limit is 1 h); `hopt extend` resumes it"]


def test_an_extend_after_a_stop_reads_as_the_resume():
    entries = replayed([*JOURNAL, Extend(population=4, intervals=3, worker="hopt-extend", time=13.0)]).entries

    assert describe(entries[-1]) == "resumed after its stop by `hopt extend`, at 4 members x 3 intervals"
    assert entries[-1].reason == "resumed after a stop"


def test_reading_the_journal_in_parts_gives_the_records_of_one_reading():
    whole = replayed(JOURNAL)
    for cut in range(len(JOURNAL) + 1):
        parts = replayed(JOURNAL[:cut])
        parts.extend(JOURNAL[cut:])

        assert parts.replayed == whole.replayed
        assert parts.attempts(0, 1) == whole.attempts(0, 1)

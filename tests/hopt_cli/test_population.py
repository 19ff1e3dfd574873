"""The population state machine: lineages copied on exploit share storage, never history."""
from __future__ import annotations

from hopt_cli.decision import Decision
from hopt_cli.events import Claim, Commit, JournalEvent
from hopt_cli.population import Claimer, Population


def _events(member: int, action: str, parent: int | None, interval: int, checkpoint: str | None, score: float,
            x: float) -> list[JournalEvent]:
    decision = Decision(action, parent, checkpoint, interval, (x,), 0.1, interval, False)
    token = f"{member}-{interval}-{action}"
    return [Claim(member=member, token=token, decision=decision, hparams={"x": x}),
            Commit(member=member, token=token, decision=decision, hparams={"x": x}, checkpoint=token, score=score)]


def test_an_exploited_lineage_and_its_copy_grow_apart():
    population = Population(2, 10)
    for event in (_events(0, "start", None, 0, None, 1.0, 0.5) + _events(0, "continue", 0, 1, "0-0-start", 2.0, 0.5)
                  + _events(1, "start", None, 0, None, 0.1, 0.9)
                  + _events(1, "exploit", 0, 2, "0-1-continue", 3.0, 0.7)
                  + _events(0, "continue", 0, 2, "0-1-continue", 2.5, 0.5)):
        population.apply(event)

    parent, child = population.members[0].lineage, population.members[1].lineage
    assert parent.scores == [1.0, 2.0, 2.5]
    assert child.scores == [1.0, 2.0, 3.0]
    assert [(s.start, s.member, s.copied_from) for s in parent.segments] == [(0, 0, None)]
    assert [(s.start, s.member, s.copied_from) for s in child.segments] == [(0, 0, None), (2, 1, 0)]
    assert child.segments[0] is parent.segments[0]  # shared, which is safe because segments are frozen
    assert population.best[0].lineage.scores == [1.0, 2.0, 3.0]


def test_a_view_turns_a_minimized_objective_so_that_higher_is_better():
    for maximize, expected in ((True, (1.0, 2.0)), (False, (-1.0, -2.0))):
        population = Population(2, 10, maximize=maximize)
        for event in _events(0, "start", None, 0, None, 1.0, 0.5) + _events(0, "continue", 0, 1, "0-0-start", 2.0, 0.5):
            population.apply(event)

        assert population.view().members[0].scores == expected
        assert population.view() is population.view()  # kept until the next commit


def test_progress_counts_an_exploit_as_a_jump_and_keeps_only_recent_commits():
    population = Population(2, 10)
    timed = []
    for moment, event in enumerate(
            _events(0, "start", None, 0, None, 1.0, 0.5) + _events(0, "continue", 0, 1, "0-0-start", 2.0, 0.5)
            + _events(0, "continue", 0, 2, "0-1-continue", 2.5, 0.5) + _events(1, "start", None, 0, None, 0.1, 0.9)
            + _events(1, "exploit", 0, 3, "0-2-continue", 3.0, 0.7)):
        timed.append(event.at(100.0 + moment))
        population.apply(timed[-1])

    assert population.intervals_done == 3 + 4  # member 1 jumped from interval 1 to its parent's 4
    assert population.intervals_done == sum(m.interval for m in population.members)
    assert population.started == 100.0
    commits = [(e.time, done) for e, done in zip((e for e in timed if isinstance(e, Commit)), (1, 2, 3, 4, 7))]
    assert population.progress == commits  # 2 x size commits; the start point has gone


def test_a_claim_records_its_holder_and_only_a_commit_of_its_token_ends_it():
    population = Population(1, 10)
    decision = Decision("start", None, None, 0, (0.5,), 0.1, 0, False)
    population.apply(Claim(member=0, token="a", decision=decision, hparams={"x": 0.5}, worker="w", host="node1",
                           pid=42, pidns=7))
    population.apply(Commit(member=0, token="old", decision=decision, hparams={"x": 0.5}, checkpoint="c", score=1.0))

    member = population.members[0]
    assert member.claim_holder == Claimer("w", "node1", 42, 7)
    assert member.claim_open and population.claimed() == {0} and population.open_claims() == {"a"}

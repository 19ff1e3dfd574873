"""plan_next: which member is claimed next, and when a finished lineage may be adopted instead of trained on."""
from __future__ import annotations

from hopt_cli.decision import Decision
from hopt_cli.events import Claim, Commit
from hopt_cli.planning import plan_next
from hopt_cli.policies import make_policy
from hopt_cli.population import Population
from hopt_cli.space import SearchSpace

SPACE = SearchSpace.from_recipe({"h": {"type": "float", "low": 0.0, "high": 1.0}})
INTERVALS = 6
# No explorers, so every member ranks; quantile 0.375 of 4 members: one bottom member, one top parent.
ROMUL = make_policy("romul", {"explorers": 0.0})


def population(histories: dict[int, list[float]]) -> Population:
    """Members that trained these score histories on their own (no exploits), one commit per interval."""
    population = Population(len(histories), INTERVALS)
    for member, scores in histories.items():
        for interval, score in enumerate(scores):
            action, parent = ("start", None) if interval == 0 else ("continue", member)
            checkpoint = None if interval == 0 else f"{member}-{interval - 1}"
            decision = Decision(action, parent, checkpoint, interval, (member / 10,), 0.1, 0, False)
            token = f"{member}-{interval}"
            population.apply(Claim(member=member, token=token, decision=decision, hparams={"h": member / 10}))
            population.apply(Commit(member=member, token=token, decision=decision, hparams={"h": member / 10},
                                    checkpoint=token, score=score))
    return population


def test_a_finished_lineage_that_decayed_is_not_adopted_the_member_trains_on():
    """Member 0 leads at member 3's training time (interval 3) but has since decayed below member 3's latest."""
    decayed = population({0: [0.5, 0.8, 0.9, 0.7, 0.5, 0.3], 1: [0.4, 0.7, 0.8, 0.6, 0.4, 0.2],
                          2: [0.45, 0.75, 0.85, 0.65, 0.45, 0.25], 3: [0.3, 0.6, 0.7]})

    for seed in range(20):
        plan = plan_next(decayed, set(), ROMUL, SPACE, seed)

        assert (plan.member, plan.adopt) == (3, False)
        assert (plan.decision.action, plan.decision.parent, plan.decision.interval) == ("continue", 3, 3)


def test_of_the_finished_lineages_the_best_final_one_is_adopted_when_it_beats_the_members_current_one():
    """Member 0 leads at interval 3 but decayed; member 2 ranks lower then yet ends best, above member 3."""
    mixed = population({0: [0.5, 0.8, 0.9, 0.7, 0.5, 0.3], 1: [0.4, 0.7, 0.8, 0.6, 0.4, 0.2],
                        2: [0.45, 0.75, 0.85, 0.9, 0.95, 0.97], 3: [0.3, 0.6, 0.7]})

    plan = plan_next(mixed, set(), ROMUL, SPACE, seed=0)

    assert (plan.member, plan.adopt) == (3, True)
    assert (plan.decision.parent, plan.decision.checkpoint, plan.decision.interval) == (2, "2-5", INTERVALS)


def test_a_finished_lineage_ahead_on_average_but_behind_at_its_end_is_not_adopted():
    """Member 0's final two average 0.75, above member 3's 0.65, but its last 0.6 is below member 3's 0.7."""
    still_falling = population({0: [0.5, 0.8, 0.95, 0.9, 0.9, 0.6], 1: [0.4, 0.7, 0.8, 0.6, 0.4, 0.2],
                                2: [0.45, 0.75, 0.85, 0.65, 0.45, 0.25], 3: [0.3, 0.6, 0.7]})

    plan = plan_next(still_falling, set(), ROMUL, SPACE, seed=0)

    assert (plan.member, plan.adopt, plan.decision.action) == (3, False, "continue")

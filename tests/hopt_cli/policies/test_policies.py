"""Search policies (ROMUL.md): romul, de, pbt, random, and make_policy's validation.

Every situation is a PopulationView built by hand: members with known score histories, explorer flags,
last changes and intervals. Randomness comes only from decision_rng, so each test is deterministic.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hopt_cli.errors import RecipeError
from hopt_cli.policies import make_policy, policy_settings
from hopt_cli.seeds import decision_rng
from hopt_cli.policies.romul import Romul
from hopt_cli.decision import Decision
from hopt_cli.population import MemberView, PopulationView
from hopt_cli.space import SearchSpace

SPACE = SearchSpace.from_recipe({
    "lr": {"type": "log", "low": 1.0e-4, "high": 1.0, "init": [1.0e-3, 1.0e-1]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.8},
    "batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
    "augment": {"type": "choice", "values": ["none", "shift", "shift+noise"]},
})
CELLS = (1 / 6, 1 / 2, 5 / 6)
SEEDS = range(200)
N = 16
EXPLORERS = 4  # round(0.25 * 16)


def coords_for(m: int) -> tuple[float, ...]:
    """Fixed, distinct coordinates per member; the choice coordinate is a cell centre."""
    rng = np.random.default_rng(1000 + m)
    u = rng.uniform(0.05, 0.95, size=SPACE.dim)
    u[3] = CELLS[m % 3]
    return tuple(float(x) for x in u)


def member(m: int, scores, *, interval: int | None = None, sigma: float = 0.1, last_change: int = 0,
           explorer: bool = False, coords: tuple[float, ...] | None = None) -> MemberView:
    scores = tuple(float(s) for s in scores)
    interval = len(scores) if interval is None else interval
    return MemberView(member=m, interval=interval, scores=scores,
                      coords=coords_for(m) if coords is None else coords, sigma=sigma,
                      last_change=last_change, explorer=explorer,
                      checkpoint=f"m{m}-i{interval}" if scores else None)


def fresh(m: int) -> MemberView:
    return MemberView(m, 0, (), (), 0.0, 0, False, None)


def view(members, intervals: int = 20) -> PopulationView:
    members = sorted(members, key=lambda p: p.member)
    assert [p.member for p in members] == list(range(len(members)))
    return PopulationView(tuple(members), intervals)


def constant_population(score_of, t: int = 6, *, explorers: int = EXPLORERS, sigma: float = 0.1,
                        intervals: int = 20, **overrides) -> PopulationView:
    """N members at interval t, each with a constant score history; overrides replace members."""
    members = {m: member(m, [score_of(m)] * t, explorer=m < explorers, sigma=sigma) for m in range(N)}
    members.update(overrides.get("replace", {}))
    return view(members.values(), intervals)


def romul_scores(m: int) -> float:
    """Explorer 0 is the best of all; the other explorers are the worst; non-explorers rank by index."""
    if m == 0:
        return 10.0
    if m < EXPLORERS:
        return -10.0 + m
    return m / 10


def decide(policy, v: PopulationView, m: int, seed: int = 0, attempt: int = 0) -> Decision:
    me = v.members[m]
    return policy.decide(v, m, SPACE, decision_rng(seed, m, me.interval, attempt))


def assert_unchanged(d: Decision, me: MemberView) -> None:
    assert d.action == "continue"
    assert d.parent == me.member
    assert d.checkpoint == me.checkpoint
    assert d.interval == me.interval
    assert d.coords == me.coords
    assert d.sigma == me.sigma
    assert d.last_change == me.last_change
    assert d.explorer == me.explorer


def assert_valid_coords(coords) -> None:
    assert len(coords) == SPACE.dim
    assert all(0.0 <= x <= 1.0 for x in coords), coords
    assert any(abs(coords[3] - c) < 1e-12 for c in CELLS), coords[3]


# --- ROMUL: start, not ready, explorers, too few peers -----------------------------------------------

@pytest.mark.parametrize("size", [4, 8, 12, 16])
def test_romul_start_draws_from_the_init_box_and_flags_the_first_explorers(size):
    policy = make_policy("romul")
    v = view([fresh(m) for m in range(size)])
    explorers = round(0.25 * size)
    lr_lo, lr_hi = SPACE.param("lr").init_box()
    for m in range(size):
        for seed in range(20):
            d = decide(policy, v, m, seed)
            assert d.action == "start"
            assert d.parent is None and d.checkpoint is None
            assert d.interval == 0 and d.last_change == 0
            assert d.sigma == 0.1
            assert d.explorer == (m < explorers)
            assert_valid_coords(d.coords)
            assert lr_lo <= d.coords[0] <= lr_hi
            assert 1e-3 * (1 - 1e-9) <= SPACE.decode(d.coords)["lr"] <= 1e-1 * (1 + 1e-9)


def test_romul_start_uses_sigma0_setting():
    policy = make_policy("romul", {"sigma0": 0.3, "explorers": 0.5})
    v = view([fresh(m) for m in range(8)])
    decisions = [decide(policy, v, m) for m in range(8)]
    assert [d.sigma for d in decisions] == [0.3] * 8
    assert [d.explorer for d in decisions] == [True] * 4 + [False] * 4


def test_romul_member_not_ready_continues_unchanged():
    policy = make_policy("romul")
    # member 4 is the worst non-explorer, but changed one interval ago (ready = 2)
    replace = {4: member(4, [-5.0] * 6, last_change=5)}
    v = constant_population(romul_scores, replace=replace)
    for seed in SEEDS:
        assert_unchanged(decide(policy, v, 4, seed), v.members[4])
    # ready once `ready` intervals have passed since the change
    replace = {4: member(4, [-5.0] * 6, last_change=4)}
    v = constant_population(romul_scores, replace=replace)
    assert decide(policy, v, 4).action == "exploit"


def test_romul_member_at_interval_one_is_not_ready():
    policy = make_policy("romul")
    v = view([member(m, [m / 10], explorer=m < EXPLORERS) for m in range(N)])
    for m in range(N):
        assert_unchanged(decide(policy, v, m), v.members[m])


def test_romul_explorer_never_changes():
    policy = make_policy("romul")
    v = constant_population(romul_scores)
    for m in range(1, EXPLORERS):  # the worst members of all
        for seed in SEEDS:
            assert_unchanged(decide(policy, v, m, seed), v.members[m])
    # even when every ready member is in the bottom
    everyone_bad = constant_population(lambda m: -m, explorers=EXPLORERS)
    for seed in SEEDS:
        assert_unchanged(decide(policy, everyone_bad, 3, seed), everyone_bad.members[3])


def test_romul_too_few_peers_continues():
    policy = make_policy("romul")
    # only members 4..8 have trained; 5 is the worst; the others have not started
    def population(scored):
        members = [member(m, [m / 10 if m != 5 else -1.0] * 4) if m in scored else fresh(m)
                   for m in range(N)]
        return view(members)

    few = population({4, 5, 6, 7})  # 3 peers < max(2, 16 / 4)
    for seed in SEEDS:
        assert_unchanged(decide(policy, few, 5, seed), few.members[5])
    enough = population({4, 5, 6, 7, 8})  # 4 peers
    decisions = [decide(policy, enough, 5, seed) for seed in SEEDS]
    assert all(d.action == "exploit" for d in decisions)
    assert {d.parent for d in decisions} == {8}  # top quantile of 5 scored members: the best one


def test_romul_small_population_needs_two_peers():
    policy = make_policy("romul", {"explorers": 0.0})
    lonely = view([member(0, [-1.0] * 4), member(1, [1.0] * 4), fresh(2), fresh(3)])
    assert_unchanged(decide(policy, lonely, 0), lonely.members[0])


# The selection sets in these tests are worked out for quartiles (ROMUL.md's starting quantile), so
# they pin it rather than follow the tuned default.
QUARTILES = {"quantile": 0.25}


# --- ROMUL: selection ------------------------------------------------------------------------------

def test_romul_bottom_exploits_top_including_explorers():
    policy = make_policy("romul", QUARTILES)
    v = constant_population(romul_scores)
    # non-explorers 4..15 rank by index: bottom 3 = 4, 5, 6; top 4 of all = 0 (explorer), 15, 14, 13
    parents = Counter()
    for m in (4, 5, 6):
        me = v.members[m]
        for seed in SEEDS:
            d = decide(policy, v, m, seed)
            assert d.action == "exploit"
            assert d.parent in (0, 13, 14, 15)
            parent = v.members[d.parent]
            assert d.checkpoint == parent.checkpoint
            assert d.interval == parent.interval == me.interval
            assert d.last_change == me.interval  # the change happens now (parent at the same time)
            assert d.explorer is False
            assert d.sigma in (0.05, 0.1, 0.2)
            assert_valid_coords(d.coords)
            parents[d.parent] += 1
    assert set(parents) == {0, 13, 14, 15}
    # rank-weighted: the best is drawn more often than the fourth
    assert parents[0] > parents[13]


def test_romul_members_not_in_the_bottom_continue():
    policy = make_policy("romul", QUARTILES)
    v = constant_population(romul_scores)
    for m in range(7, N):
        for seed in range(30):
            assert_unchanged(decide(policy, v, m, seed), v.members[m])


def test_romul_sigma_is_parent_sigma_times_half_one_or_two():
    policy = make_policy("romul", QUARTILES)
    for sigma, expected in ((0.1, {0.05, 0.1, 0.2}), (0.5, {0.25, 0.5}), (0.005, {0.005, 0.01}),
                            (0.3, {0.15, 0.3, 0.5})):
        v = constant_population(romul_scores, sigma=sigma)
        got = Counter(decide(policy, v, 4, seed).sigma for seed in range(300))
        assert set(got) == expected, (sigma, got)
        assert all(0.005 <= s <= 0.5 for s in got)


def test_romul_sigma_respects_custom_bounds():
    policy = make_policy("romul", {"sigma_min": 0.05, "sigma_max": 0.2})
    for sigma in (0.05, 0.2, 0.1):
        v = constant_population(romul_scores, sigma=sigma)
        for seed in SEEDS:
            assert 0.05 <= decide(policy, v, 4, seed).sigma <= 0.2


def test_romul_uses_the_parents_sigma_not_the_members():
    policy = make_policy("romul", QUARTILES)
    replace = {m: member(m, [m / 10] * 6, sigma=0.4) for m in (13, 14, 15)}
    replace[0] = member(0, [10.0] * 6, sigma=0.4, explorer=True)
    replace[4] = member(4, [0.4] * 6, sigma=0.01)
    v = constant_population(romul_scores, replace=replace)
    sigmas = {decide(policy, v, 4, seed).sigma for seed in SEEDS}
    assert sigmas == {0.2, 0.4, 0.5}


def test_romul_robust_score_is_the_mean_of_the_last_ready_scores():
    """Member 6's last score (0.9) alone would put it mid-table; the mean of its last 2 (0.5) is
    third worst among the non-explorers, so it exploits. Its earlier scores (5.0) are ignored."""
    policy = make_policy("romul", QUARTILES)
    replace = {4: member(4, [0.3] * 6), 5: member(5, [0.35] * 6),
               6: member(6, [5.0, 5.0, 5.0, 5.0, 0.1, 0.9])}
    v = constant_population(lambda m: 0.6 + m / 100 if m >= EXPLORERS else 0.0, replace=replace)
    for seed in range(50):
        assert decide(policy, v, 6, seed).action == "exploit"
    # a member whose last two average 0.65 is not in the bottom, even though its last score is 0.3
    replace[7] = member(7, [0.0, 0.0, 0.0, 0.0, 1.0, 0.3])
    v = constant_population(lambda m: 0.6 + m / 100 if m >= EXPLORERS else 0.0, replace=replace)
    for seed in range(50):
        assert_unchanged(decide(policy, v, 7, seed), v.members[7])


def test_romul_robust_window_follows_ready():
    policy = make_policy("romul", {"ready": 3})
    # last 3 of member 6: (0.1, 0.1, 1.3) -> 0.5: third worst; last 2 would be 0.7
    replace = {4: member(4, [0.3] * 6), 5: member(5, [0.35] * 6), 6: member(6, [1.0, 1.0, 1.0, 0.1, 0.1, 1.3])}
    v = constant_population(lambda m: 0.6 + m / 100 if m >= EXPLORERS else 0.0, replace=replace)
    assert decide(policy, v, 6).action == "exploit"


# --- ROMUL: equal-time comparison -------------------------------------------------------------------

def test_romul_peer_ahead_is_compared_at_the_members_time():
    """Peer 15 is 4 intervals ahead with great later scores, but at member 4's time t = 6 it was bad:
    it must not be chosen as parent."""
    policy = make_policy("romul", QUARTILES)
    ahead = member(15, [0.05] * 6 + [9.0] * 4)
    v = constant_population(romul_scores, replace={15: ahead, 4: member(4, [0.1] * 6)})
    parents = set()
    for seed in SEEDS:
        d = decide(policy, v, 4, seed)
        assert d.action == "exploit"
        parents.add(d.parent)
    assert 15 not in parents
    assert parents == {0, 12, 13, 14}


def test_romul_ranking_uses_scores_at_the_members_time():
    """Non-explorers 4..15; member 6 is third worst of the others. Peer 15 is ahead:
    - bad at t, great later: at t it is the worst, so 6 is 4th worst and continues;
    - great at t, bad later: at t it is mid-table, so 6 is 3rd worst and exploits."""
    policy = make_policy("romul", QUARTILES)

    def population(peer_scores):
        return constant_population(romul_scores, replace={15: member(15, peer_scores)})

    bad_then_great = population([0.0] * 6 + [9.0] * 4)
    for seed in range(50):
        assert_unchanged(decide(policy, bad_then_great, 6, seed), bad_then_great.members[6])
    great_then_bad = population([1.5] * 6 + [-9.0] * 4)
    for seed in range(50):
        d = decide(policy, great_then_bad, 6, seed)
        assert d.action == "exploit"
        if d.parent == 15:  # a peer ahead resumes from its own (later) checkpoint and interval
            assert d.checkpoint == "m15-i10" and d.interval == 10


def test_romul_peer_behind_is_ranked_by_its_latest_score_but_never_a_parent():
    """Peer 15 has trained 3 intervals while member 6 is at t = 6: it is compared by its latest score,
    but a lineage never goes back in training time, so it cannot be the parent."""
    policy = make_policy("romul", QUARTILES)
    # behind and bad: at the bottom of the ranking, which lifts member 6 out of the bottom three
    bad = constant_population(romul_scores, replace={15: member(15, [0.0, 0.0, 0.0])})
    for seed in range(50):
        assert_unchanged(decide(policy, bad, 6, seed), bad.members[6])
    # behind and the best non-explorer: 6 is third worst again and exploits, never from 15
    good = constant_population(romul_scores, replace={15: member(15, [5.0, 5.0, 5.0])})
    parents = Counter()
    for seed in SEEDS:
        d = decide(policy, good, 6, seed)
        assert d.action == "exploit"
        assert d.interval >= good.members[6].interval
        parents[d.parent] += 1
    assert 15 not in parents
    assert set(parents) == {0, 13, 14}  # top 4 of all by score: 0, 15, 14, 13


def test_romul_never_exploits_itself():
    policy = make_policy("romul", {"quantile": 1.0, "explorers": 0.0})
    v = constant_population(lambda m: m / 10, explorers=0)
    for seed in SEEDS:
        d = decide(policy, v, 15, seed)  # everyone is bottom and top at quantile 1
        assert d.action == "continue" or d.parent != 15


def test_romul_may_pick_finished_top_peers_as_well_as_unfinished_ones():
    """A member behind may take over a finished top lineage (the worker then adopts it whole)."""
    policy = make_policy("romul", QUARTILES)
    intervals = 8
    replace = {15: member(15, [9.0] * intervals), 14: member(14, [8.0] * intervals)}  # finished
    v = constant_population(romul_scores, intervals=intervals, replace=replace)
    parents = Counter()
    for seed in SEEDS:
        d = decide(policy, v, 4, seed)
        if d.action == "exploit":
            parents[d.parent] += 1
            assert d.interval == v.members[d.parent].interval
    assert parents[14] and parents[15], "the finished top members are never chosen"
    assert set(parents) <= {0, 13, 14, 15}


# --- ROMUL: determinism and the move --------------------------------------------------------------

def test_romul_same_seed_same_decision_and_attempts_differ():
    policy = make_policy("romul")
    v = constant_population(romul_scores)
    first = decide(policy, v, 4, seed=7, attempt=0)
    again = decide(make_policy("romul"), v, 4, seed=7, attempt=0)
    assert first == again
    assert first.to_dict() == again.to_dict()
    others = [decide(policy, v, 4, seed=7, attempt=a) for a in range(1, 6)]
    assert any(d != first for d in others)
    assert len({d.coords for d in others + [first]}) > 1
    # starts too
    fresh_view = view([fresh(m) for m in range(N)])
    assert decide(policy, fresh_view, 9, seed=3) == decide(policy, fresh_view, 9, seed=3)
    assert decide(policy, fresh_view, 9, seed=3) != decide(policy, fresh_view, 9, seed=4)


def test_romul_coords_stay_in_the_cube_even_from_the_corners():
    policy = make_policy("romul")
    corner = (0.0, 1.0, 0.0, 5 / 6)
    replace = {m: member(m, [romul_scores(m)] * 6, sigma=0.5, coords=corner, explorer=m < EXPLORERS)
               for m in (0, 13, 14, 15)}
    replace[12] = member(12, [1.2] * 6, sigma=0.5, coords=(1.0, 0.0, 1.0, 1 / 6))
    v = constant_population(romul_scores, sigma=0.5, replace=replace)
    for seed in range(400):
        d = decide(policy, v, 4, seed)
        assert d.action == "exploit"
        assert_valid_coords(d.coords)
        values = SPACE.decode(d.coords)
        for p in SPACE.params:
            if not p.is_choice:
                assert p.low <= values[p.name] <= p.high


def test_romul_choice_changes_only_by_resampling():
    policy = make_policy("romul")
    # a small step: the choice is resampled with probability min(1, 2 sigma) = 0.01..0.02
    v = constant_population(romul_scores, sigma=0.005)
    kept = 0
    for seed in range(300):
        d = decide(policy, v, 4, seed)
        assert_valid_coords(d.coords)
        kept += d.coords[3] == v.members[d.parent].coords[3]
    assert kept >= 285
    # a large step resamples every time: all cells occur whatever the parent's cell
    v = constant_population(romul_scores, sigma=0.5)
    cells = Counter()
    for seed in range(300):
        d = decide(policy, v, 4, seed)
        assert_valid_coords(d.coords)
        cells[round(d.coords[3], 6)] += 1
    assert set(cells) == {round(c, 6) for c in CELLS}


def test_romul_exploit_takes_at_least_one_coordinate_from_the_donor():
    """Step 7: binomial crossover with at least one coordinate from the donor. A choice coordinate never
    takes the donor's value (it changes only by resampling), so the forced coordinate must be a numeric
    one: otherwise the child can be an exact copy of its parent's hyperparameters."""
    policy = make_policy("romul")
    v = constant_population(romul_scores, sigma=0.005)  # choice resampling is rare at this step size
    copies = []
    for seed in range(400):
        d = decide(policy, v, 4, seed)
        parent = v.members[d.parent]
        if d.coords[:3] == parent.coords[:3]:
            copies.append(seed)
    assert copies == []


# --- DE --------------------------------------------------------------------------------------------

def test_de_keeps_the_parents_sigma():
    policy = make_policy("de")
    assert policy.adapt is False and policy.F == 0.8
    for sigma in (0.005, 0.1, 0.5):
        v = constant_population(romul_scores, sigma=sigma)
        for seed in SEEDS:
            d = decide(policy, v, 4, seed)
            assert d.action == "exploit"
            assert d.sigma == sigma
            assert_valid_coords(d.coords)


def test_de_starts_like_romul():
    v = view([fresh(m) for m in range(N)])
    d = decide(make_policy("de"), v, 0)
    assert d.action == "start" and d.sigma == 0.1 and d.explorer is True


# --- PBT -------------------------------------------------------------------------------------------

PBT_SPACE = SearchSpace.from_recipe({
    "lr": {"type": "log", "low": 1.0e-4, "high": 1.0, "init": [1.0e-3, 1.0e-1]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.8, "init": [0.1, 0.3]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99},
    "layers": {"type": "int", "low": 1, "high": 8},
    "batch_size": {"type": "int", "low": 16, "high": 256, "log": True, "init": [32, 64]},
    "augment": {"type": "choice", "values": ["none", "shift", "shift+noise"]},
})
PARENT_VALUES = {"lr": 0.01, "dropout": 0.5, "momentum": 0.9, "layers": 2, "batch_size": 100, "augment": "shift"}
PARENT_COORDS = tuple(float(x) for x in PBT_SPACE.encode(PARENT_VALUES))


def pbt_population(t: int = 6) -> PopulationView:
    members = [member(m, [m / 10] * t, sigma=0.0, coords=PARENT_COORDS) for m in range(N)]
    return view(members)


def pbt_decide(policy, v, m, seed):
    return policy.decide(v, m, PBT_SPACE, decision_rng(seed, m, v.members[m].interval, 0))


def test_pbt_bottom_exploits_a_uniform_top_member():
    policy = make_policy("pbt")
    v = pbt_population()
    # 16 members, quantile 0.2: bottom 3 = 0, 1, 2; top 3 = 15, 14, 13
    for m in (0, 1, 2):
        parents = Counter()
        for seed in range(300):
            d = pbt_decide(policy, v, m, seed)
            assert d.action == "exploit"
            parent = v.members[d.parent]
            assert d.checkpoint == parent.checkpoint and d.interval == parent.interval
            assert d.explorer is False
            parents[d.parent] += 1
        assert set(parents) == {13, 14, 15}
        assert min(parents.values()) >= 70  # uniform: about 100 each


def test_pbt_top_and_middle_continue():
    policy = make_policy("pbt")
    v = pbt_population()
    for m in range(3, N):
        for seed in range(20):
            assert_unchanged(pbt_decide(policy, v, m, seed), v.members[m])


def test_pbt_not_ready_continues():
    policy = make_policy("pbt")
    members = list(pbt_population().members)
    members[0] = member(0, [0.0] * 6, sigma=0.0, last_change=5, coords=PARENT_COORDS)
    v = view(members)
    assert_unchanged(pbt_decide(policy, v, 0, 0), v.members[0])


def test_pbt_perturbs_by_factors_without_resampling():
    policy = make_policy("pbt", {"resample": 0.0})
    v = pbt_population()
    seen = {name: set() for name in PARENT_VALUES}
    for seed in range(300):
        d = pbt_decide(policy, v, 0, seed)
        values = PBT_SPACE.decode(d.coords)
        lr = values["lr"]
        assert lr == pytest.approx(0.008) or lr == pytest.approx(0.012)
        assert values["dropout"] == pytest.approx(0.4) or values["dropout"] == pytest.approx(0.6)
        # 0.9 * 1.2 = 1.08 is clamped onto the bound
        assert values["momentum"] == pytest.approx(0.72) or values["momentum"] == pytest.approx(0.99)
        # ints move at least 1: 2 * 0.8 = 1.6 and 2 * 1.2 = 2.4 both round to 2
        assert values["layers"] in (1, 3)
        assert values["batch_size"] in (80, 120)
        assert values["augment"] in ("none", "shift", "shift+noise")
        for name in seen:
            seen[name].add(round(values[name], 9) if isinstance(values[name], float) else values[name])
    assert all(len(s) >= 2 for s in seen.values())
    assert seen["augment"] == {"none", "shift", "shift+noise"}  # choices are resampled


def test_pbt_resample_draws_from_the_init_box():
    policy = make_policy("pbt", {"resample": 1.0})
    v = pbt_population()
    for seed in range(200):
        values = PBT_SPACE.decode(pbt_decide(policy, v, 0, seed).coords)
        assert 1e-3 * (1 - 1e-9) <= values["lr"] <= 1e-1 * (1 + 1e-9)
        assert 0.1 - 1e-12 <= values["dropout"] <= 0.3 + 1e-12
        assert 0.0 <= values["momentum"] <= 0.99
        assert 1 <= values["layers"] <= 8
        assert 32 <= values["batch_size"] <= 64


def test_pbt_default_mixes_factors_and_resamples():
    policy = make_policy("pbt")
    v = pbt_population()
    resampled = factor = 0
    for seed in range(300):
        d = pbt_decide(policy, v, 1, seed)
        assert all(0.0 <= x <= 1.0 for x in d.coords)
        lr = PBT_SPACE.decode(d.coords)["lr"]
        if lr == pytest.approx(0.008) or lr == pytest.approx(0.012):
            factor += 1
        else:
            assert 1e-3 * (1 - 1e-9) <= lr <= 1e-1 * (1 + 1e-9)
            resampled += 1
    assert factor > resampled > 0


def test_pbt_clamps_at_the_bounds():
    policy = make_policy("pbt", {"resample": 0.0})
    at_top = {"lr": 1.0, "dropout": 0.8, "momentum": 0.99, "layers": 8, "batch_size": 256, "augment": "none"}
    coords = tuple(float(x) for x in PBT_SPACE.encode(at_top))
    members = [member(m, [m / 10] * 6, sigma=0.0, coords=coords) for m in range(N)]
    v = view(members)
    for seed in range(100):
        d = pbt_decide(policy, v, 0, seed)
        assert all(0.0 <= x <= 1.0 for x in d.coords)
        values = PBT_SPACE.decode(d.coords)
        for p in PBT_SPACE.params:
            if not p.is_choice:
                assert p.low <= values[p.name] <= p.high


def test_pbt_is_deterministic():
    policy = make_policy("pbt")
    v = pbt_population()
    assert pbt_decide(policy, v, 0, 5) == pbt_decide(policy, v, 0, 5)


# --- random ----------------------------------------------------------------------------------------

def test_random_starts_then_always_continues():
    policy = make_policy("random")
    start_view = view([fresh(m) for m in range(N)])
    lr_lo, lr_hi = SPACE.param("lr").init_box()
    for m in range(N):
        d = decide(policy, start_view, m, m)
        assert d.action == "start" and d.checkpoint is None and d.interval == 0
        assert lr_lo <= d.coords[0] <= lr_hi
        assert_valid_coords(d.coords)
    v = constant_population(lambda m: m / 10, explorers=0)
    for m in range(N):  # the worst members too
        for seed in range(10):
            assert_unchanged(decide(policy, v, m, seed), v.members[m])


# --- make_policy -----------------------------------------------------------------------------------

def test_make_policy_builds_each_policy_with_overrides():
    romul = make_policy("romul", {"quantile": 0.5, "ready": 3, "sigma0": 1})
    assert isinstance(romul, Romul)
    assert (romul.quantile, romul.ready, romul.sigma0) == (0.5, 3, 1)
    assert make_policy("romul") == Romul()
    assert make_policy("pbt", {"quantile": 0.25}).quantile == 0.25
    assert make_policy("de", {"ready": 4}).ready == 4
    make_policy("random")
    make_policy("random", {})


@pytest.mark.parametrize("name, settings, key", [
    ("bayes", None, "policy.name"),
    ("ROMUL", None, "policy.name"),
    ("romul", {"foo": 1}, "policy.foo"),
    ("pbt", {"explorers": 0.2}, "policy.explorers"),
    ("random", {"ready": 2}, "policy.ready"),
    ("de", {"F": 0.5}, "policy.F"),
    ("de", {"adapt": True}, "policy.adapt"),
    ("romul", {"quantile": 2}, "policy.quantile"),
    ("romul", {"quantile": -0.1}, "policy.quantile"),
    ("pbt", {"resample": 1.5}, "policy.resample"),
    ("romul", {"ready": 0}, "policy.ready"),
    ("romul", {"ready": 1.5}, "policy.ready"),
    ("romul", {"ready": True}, "policy.ready"),
    ("romul", {"adapt": "yes"}, "policy.adapt"),
    ("romul", {"adapt": 1}, "policy.adapt"),
    ("romul", {"wait": False}, "policy.wait"),
    ("de", {"de_move": False}, "policy.de_move"),
    ("romul", {"sigma0": -0.1}, "policy.sigma0"),
    ("romul", {"sigma0": "0.1"}, "policy.sigma0"),
    ("romul", {"explorers": True}, "policy.explorers"),
    ("romul", {"CR": 1.01}, "policy.CR"),
])
def test_make_policy_rejects_bad_names_and_settings(name, settings, key):
    """`romul`'s ablation switches are refused like unknown settings unless at their defaults."""
    with pytest.raises(RecipeError) as info:
        make_policy(name, settings)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_ablation_switches_are_not_recipe_settings_but_an_older_experiment_yaml_with_them_still_reads():
    written_by_earlier_hopt = {"quantile": 0.375, "wait": True, "equal_time": True, "robust": True,
                               "rank_select": True, "adapt": True, "de_move": True}
    assert make_policy("romul", written_by_earlier_hopt) == Romul()
    assert make_policy("de", {k: v for k, v in written_by_earlier_hopt.items() if k != "adapt"}) == make_policy("de")
    assert set(policy_settings("romul", Romul())) == {"explorers", "sigma0", "sigma_min", "sigma_max", "ready",
                                                      "quantile", "F", "resample", "CR"}

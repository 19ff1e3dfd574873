"""The worker loop's one critical section per interval: the commit of an interval and the claim of the next."""
from __future__ import annotations

from hopt_cli.planning import plan_next
from hopt_cli.recipe import Recipe
from hopt_cli.store import Claimed, Store
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.trainable import Context
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe
from tests.invariants import check_finished_experiment


def test_a_commit_that_claims_its_own_member_again_keeps_the_new_lease(tmp_path):
    # While another worker holds member 0, each commit claims member 1 again, whose lease file it drops; then
    # the other gives member 0 back and the same goes for it.
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=3)))
    other = Store.open(store.paths.root)
    held = other.claim_next(Holder.this_process("other"), lambda population, leased: plan_next(
        population, leased, other.recipe.policy.build(), other.recipe.space, other.recipe.seed))
    assert isinstance(held, Claimed) and held.member == 0
    reader, trained = Store.open(store.paths.root), []

    def trainable(ctx: Context) -> float:
        lease = Lease.read(reader.paths.lease(ctx.member))
        trained.append((ctx.member, lease is not None and lease.token == reader.sync().members[ctx.member].token))
        if (ctx.member, ctx.interval) == (1, 2):
            with other.transaction():
                assert other.release(held.lease, "given back", other.staging.make(held.lease))
        return ctx.hparams["h0"]

    report = Worker(store, "w", trainable=trainable).run()

    assert report.complete and report.commits == 6
    assert trained == [(1, True)] * 3 + [(0, True)] * 3
    check_finished_experiment(store.paths.root)


class StopAfterTheClaim:
    """A stop (SIGTERM's handler sets one) that arrives just after a commit claimed the next interval."""

    def __init__(self, store: Store, commits: int) -> None:
        self.store, self.commits, self._requested = store, commits, False

    @property
    def requested(self) -> bool:
        population = self.store.population
        self._requested = self._requested or (
            population.intervals_done >= self.commits and any(m.claim_open for m in population.members))
        return self._requested


def test_a_stop_after_a_commit_claimed_releases_that_claim_untrained(tmp_path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=3)))
    trained = []

    report = Worker(store, "w", StopAfterTheClaim(store, 3), lambda ctx: trained.append(ctx) or 1.0).run()

    population = store.sync()
    last = store.read_events()[0][-1]
    assert report.stopped and report.commits == len(trained) == 3 and population.intervals_done == 3
    assert (last.kind, last.reason) == ("release", "stop requested")
    assert not any(m.claim_open for m in population.members) and not list(store.paths.leases.iterdir())

"""The worker loop: claim a member under the lock, train one interval without it, commit under it and claim
the next interval in that same critical section.

This is the only module that joins the store, the policies and the trainable. A worker may be killed
at any moment; everything it leaves behind is valid, and its lease expires or is reclaimed.
"""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from hopt_cli import intervallog
from hopt_cli.errors import ExperimentFailed, RuntimeFailure
from hopt_cli.isolation import POISONED_EXIT, IsolatedTrainable, make_trainable, poisons_process
from hopt_cli.planning import Plan, plan_next
from hopt_cli.population import Population
from hopt_cli.recipe import Recipe
from hopt_cli.seeds import trainable_seed
from hopt_cli.store import Claimed, NoClaim, Store
from hopt_cli.store.leases import Holder, Lease
from hopt_cli.timing import StepTiming
from hopt_cli.trainable import CommandTrainable, Context, Outcome, run_interval, thread_settings

log = logging.getLogger("hopt")
WAIT_SECONDS = (0.05, 0.5)
STOPPED = Outcome(None, {}, "stop requested before training")
class ProcessPoisoned(RuntimeFailure):
    """A CUDA error in this process left its GPU context unusable: it trains no more, a fresh process must."""

    exit_code = POISONED_EXIT


class StopRequest(Protocol):
    """Set by a signal handler; the loop and the trainable poll it."""

    @property
    def requested(self) -> bool: ...


class NeverStop:
    requested = False


@dataclass
class WorkerReport:
    """What one worker did before it stopped."""

    commits: int = 0
    failures: int = 0
    fenced: int = 0
    stopped: bool = False
    complete: bool = False
    stop_rule: str | None = None  # why a stop rule stopped the experiment, if one did


class Worker:
    def __init__(self, store: Store, name: str, stop: StopRequest | None = None,
                 trainable: Callable[[Context], Any] | None = None) -> None:
        self.store = store
        self.holder = Holder.this_process(name)
        self.stop = stop or NeverStop()
        self.trainable = trainable or make_trainable(self.recipe)
        self.policy = self.recipe.policy.build()
        self.report = WorkerReport()
        self._dropped: set[str] = set()
        self._warned_empty = False
        self._poisoned: str | None = None  # why this process must not train again

    @property
    def recipe(self) -> Recipe:
        """The recipe in force: `hopt set` may change its operational settings between two claims."""
        return self.store.recipe

    def run(self) -> WorkerReport:
        """Train intervals until the experiment is complete or a stop is requested.

        Raises ProcessPoisoned after an interval of ours failed with a CUDA error that breaks every later
        CUDA call of this process: its member is failed once (journaled), and a fresh process takes over."""
        try:
            following: Claimed | NoClaim | None = None
            # A claim made with the last commit is trained (or, on a stop, released) before the loop ends.
            while isinstance(following, Claimed) or (not self.stop.requested and self._poisoned is None):
                claim = self.claim(following)
                if claim is None:
                    break
                following = self._interval(claim, claim_next=True)
        finally:
            self.close()
        if self._poisoned is not None:
            failed = self.store.sync().failed
            raise ExperimentFailed(failed) if failed else ProcessPoisoned(self._poisoned)
        self.report.stopped = self.stop.requested
        self.report.complete = self.store.population.complete
        self.report.stop_rule = self.store.population.stopped
        return self.report

    def close(self) -> None:
        """Delete the trash of our last commit and end the trainable's child process, if it has one."""
        self.store.collector.empty_trash()
        if isinstance(self.trainable, IsolatedTrainable):
            self.trainable.close()

    def claim(self, first: Claimed | NoClaim | None = None) -> Claimed | None:
        """The next member to train and its decision; None when the experiment is complete or we stop.

        `first` is the answer the last commit's transaction already gave, if it claimed; a Claimed one is ours
        to train or release even when a stop was requested since."""
        claim = first
        while isinstance(claim, Claimed) or not self.stop.requested:
            if claim is None:
                started = time.perf_counter()
                claim = self._try_claim()
                self._log_timing(claim.value if isinstance(claim, NoClaim) else "claim", started)
            if claim in (NoClaim.COMPLETE, NoClaim.STOPPED):
                return None
            if isinstance(claim, Claimed):
                self._take_up_timeout()
                return claim
            if claim is NoClaim.BUSY:
                time.sleep(random.uniform(*WAIT_SECONDS))  # every unfinished member is being trained: wait
            claim = None
        return None

    def _try_claim(self) -> Claimed | NoClaim:
        """A claim of the next member to train, or why there is none: the store records what `_plan` decides."""
        return self.store.claim_next(self.holder, self._plan)

    def _plan(self, population: Population, leased: set[int]) -> Plan | None:
        return plan_next(population, leased, self.policy, self.recipe.space, self.recipe.seed)

    def _take_up_timeout(self) -> None:
        """An interval_timeout changed by `hopt set`: a command or a trainable in a child process keeps to it from
        now on; one running in this process (no interval_timeout when the worker started) only once restarted."""
        timeout = self.recipe.interval_timeout
        if isinstance(self.trainable, CommandTrainable) and self.trainable.timeout != timeout:
            self.trainable = replace(self.trainable, timeout=timeout)
        elif isinstance(self.trainable, IsolatedTrainable):
            self.trainable.timeout = math.inf if timeout is None else timeout

    def train_and_commit(self, claim: Claimed) -> None:
        """Train the claimed interval and commit it (or journal its failure or release), and claim nothing."""
        self._interval(claim, claim_next=False)

    def _interval(self, claim: Claimed, claim_next: bool) -> Claimed | NoClaim | None:
        """Train the claimed interval and commit it (or journal its failure or release); with `claim_next`, claim
        the next one in the same critical section: one lock and one journal read per interval. Returns that
        claim, or None when none was made (a stop, a poisoned process, a failed experiment)."""
        staging = self.store.staging.make(claim.lease)
        started = time.monotonic()
        if self.stop.requested:
            outcome, fenced = STOPPED, False
        else:
            outcome, fenced = self._train_logged(claim, staging)
        committing = time.perf_counter()
        staging_area = self.store.staging
        if outcome.error is None and not staging_area.present(staging):
            outcome = Outcome(None, {}, f"the trainable removed its output folder ctx.out ({staging}); "
                                        "write into it, never remove it")
        elif outcome.error is None and not self._warned_empty and staging_area.empty(staging):
            self._warned_empty = True
            log.warning("the trainable wrote nothing into ctx.out: its checkpoints are empty, so a member that "
                        "continues or copies one starts from scratch (said once per worker)")
        ready = outcome.error is None and not self.stop.requested
        digest = staging_area.digest(staging) if ready else None
        checkpoint = staging_area.publish(claim.lease, staging) if ready else None
        self._poisoned = self._poisoned or self._why_poisoned(claim, outcome)
        following: Claimed | NoClaim | None = None
        claims_next = claim_next and not self.stop.requested and self._poisoned is None
        with self.store.transaction():
            if checkpoint is not None:
                committed, following = self._commit(claim, outcome, checkpoint, digest, claims_next)
                if committed:
                    self.report.commits += 1
                    result = f"committed score {outcome.score:.6g}"
                else:
                    self.report.fenced += 1
                    result = "discarded: our lease was reclaimed (presumed dead), another worker owns it"
            elif self.stop.requested:
                self.store.release(claim.lease, "stop requested", staging)
                result = "released at once (stop requested)"
            elif outcome.error is None:  # its staging folder was collected while it trained: not ours any more
                self.store.release(claim.lease, "its staging folder was collected while it trained", staging)
                self.report.fenced += 1
                result = "discarded: its staging folder was collected while it trained"
            elif self.store.fail(claim.lease, outcome.error, staging):
                self.report.failures += 1
                result = f"FAILED: {outcome.error}"
            else:
                self.report.fenced += 1
                result = f"discarded ({outcome.error}): our lease was reclaimed, another worker owns it"
            population = self.store.population  # read again if our events read back void
            done, budget = population.intervals_done, population.budget
            if claims_next and checkpoint is None and not population.failed:
                following = self.store.claim_within(self.holder, self._plan)
        self._log_timing("commit", committing)
        log.info("member %d interval %d %s in %.2f s (%d/%d intervals done)%s", claim.member,
                 claim.decision.interval, result, time.monotonic() - started, done, budget,
                 " [lease lost while training]" if fenced else "")
        return following

    def _commit(self, claim: Claimed, outcome: Outcome, checkpoint: str, digest: str | None,
                claims_next: bool) -> tuple[bool, Claimed | NoClaim | None]:
        """Commit the interval (inside the transaction) and, with `claims_next`, claim the next one with it."""
        args = (claim.lease, claim.decision, claim.hparams, outcome.score, outcome.metrics, checkpoint)
        if claims_next:
            return self.store.commit_and_claim(*args, self.holder, self._plan, thread_settings(), digest)
        return self.store.commit(*args, thread_settings(), digest), None

    def _why_poisoned(self, claim: Claimed, outcome: Outcome) -> str | None:
        """Why this process must train no more, when the interval failed with a CUDA error in this process."""
        in_process = not isinstance(self.trainable, (IsolatedTrainable, CommandTrainable))
        if not in_process or outcome.error is None or not poisons_process(outcome.error):
            return None
        return (f"member {claim.member} interval {claim.decision.interval} failed with a CUDA error "
                f"({outcome.error.splitlines()[0]}), after which every CUDA call of this process fails: this worker "
                "stops so that a fresh process takes over (hopt run and hopt worker --workers start one, a lone "
                "worker with --requeue requeues its SLURM task, any other must be started again; with "
                "interval_timeout only the trainable's child process is replaced)")

    def _log_timing(self, step: str, started: float) -> None:
        """One DEBUG line with the lock wait and hold of the step that just ended (see hopt_cli/timing.py)."""
        if log.isEnabledFor(logging.DEBUG):
            lock = self.store.lock
            log.debug("%s", StepTiming(step, lock.waited, lock.held, time.perf_counter() - started, time.time()))

    def _train_logged(self, claim: Claimed, staging: Any) -> tuple[Outcome, bool]:
        """Train, and keep what the interval wrote to our log (from its claim line on) as its own log."""
        mark = intervallog.mark()
        try:
            decision = claim.decision
            log.info("claim member %d interval %d: %s%s %s", claim.member, decision.interval, decision.action,
                     f" from member {decision.parent}" if decision.action == "exploit" else "", _fmt(claim.hparams))
            return self._train(claim, staging)
        finally:
            if mark is not None:
                self.store.keep_interval_log(claim.lease, mark.output())

    def _train(self, claim: Claimed, staging: Any) -> tuple[Outcome, bool]:
        """Run the trainable with a heartbeat thread keeping the lease alive."""
        decision = claim.decision
        parent = self.store.staging.parent(decision.checkpoint)
        if parent is not None and not self.store.staging.present(parent):
            return Outcome(None, {}, f"checkpoint {parent} is missing (deleted outside hopt?); restore it from "
                                     "a backup: hopt never deletes a checkpoint that is still referenced"), False
        before = self.store.staging.state(parent) if parent is not None else None
        lost = threading.Event()
        finished = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(claim.lease, lost, finished), daemon=True)
        beat.start()
        ctx = Context(
            hparams=claim.hparams,
            parent=parent,
            out=staging,
            interval=decision.interval,
            steps=self.recipe.steps,
            member=claim.member,
            seed=trainable_seed(self.recipe.seed, claim.member, decision.interval),
            should_stop=lambda: self.stop.requested or lost.is_set(),
        )
        try:
            outcome = run_interval(self.trainable, ctx, self.recipe.objective.metric)
        finally:
            finished.set()
            beat.join()
        if parent is not None and self.store.staging.state(parent) != before:
            outcome = Outcome(None, {}, f"{self.recipe.trainable_text} wrote into its parent checkpoint {parent} "
                                        "(ctx.parent), which must stay as it was committed: write only into ctx.out")
        self._warn_dropped(outcome.dropped)
        return outcome, lost.is_set()

    def _warn_dropped(self, names: tuple[str, ...]) -> None:
        """Say once per metric name that a value which is no scalar is not recorded."""
        new = [name for name in names if name not in self._dropped]
        if new:
            self._dropped.update(new)
            log.warning("metric(s) %s are not scalars and are not recorded; return numbers (save arrays "
                        "into ctx.out)", new)

    def _heartbeat(self, lease: Lease, lost: threading.Event, finished: threading.Event) -> None:
        """Keep the lease alive while the interval trains; first delete what the last commit trashed,
        which on a network filesystem takes milliseconds the training hides."""
        try:
            self.store.collector.empty_trash()
        except OSError as err:  # garbage only: it must not stop the heartbeat
            log.warning("could not empty %s (%s); tried again after the next commit", self.store.paths.trash, err)
        while not finished.wait(self.recipe.lease.heartbeat):
            if not self.store.leases.heartbeat(lease):
                lost.set()
                return


def _fmt(hparams: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in hparams.items())

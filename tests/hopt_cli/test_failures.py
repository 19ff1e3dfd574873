"""Training failures of every kind: a journaled failed interval with the error, bounded retries, one final message."""
from __future__ import annotations

import shutil

import pytest

from hopt_cli.errors import ExperimentFailed
from hopt_cli.events import Claim, Fail
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import ProcessPoisoned, Worker
from tests.conftest import toy_recipe
from workers.toys import pbt_quadratic

METRICS = """printf '{{"score": 1}}' > {out}/metrics.json"""


def command(member_0_does: str) -> dict:
    """A command trainable that resumes nothing from {parent}: member 0 does `member_0_does`, the others write a
    good metrics.json."""
    return {"worker": None, "command": f": {{parent}}; if test {{member}} = 0; then {member_0_does}; fi; {METRICS}"}


CASES = {
    "exception": ({"worker": "tests.hopt_cli.trainables:raises"}, "RuntimeError: boom"),
    "nan score": ({"worker": "tests.hopt_cli.trainables:nan_for_member_1"}, "metric 'score' is nan"),
    "inf score": ({"worker": "tests.hopt_cli.trainables:scores_inf"}, "metric 'score' is inf"),
    "output folder removed": ({"worker": "tests.hopt_cli.trainables:removes_its_output"},
                              "the trainable removed its output folder ctx.out"),
    "missing metric": ({"worker": "tests.hopt_cli.trainables:misses_metric"},
                       "metric 'score' missing from the result (got loss)"),
    "hang past interval_timeout": ({"worker": "tests.hopt_cli.trainables:hangs", "interval_timeout": 0.5},
                                   "the interval ran longer than interval_timeout (0.5 s) and was killed"),
    "process killed (OOM)": ({"worker": "tests.hopt_cli.trainables:dies", "interval_timeout": 30},
                             "the trainable's process died (killed by SIGKILL)"),
    "sys.exit(3)": ({"worker": "tests.hopt_cli.trainables:exits_3"}, "the trainable called sys.exit(3)"),
    "sys.exit(3), isolated": ({"worker": "tests.hopt_cli.trainables:exits_3", "interval_timeout": 30},
                              "the trainable called sys.exit(3)"),
    "sys.exit(0)": ({"worker": "tests.hopt_cli.trainables:exits_0"}, "the trainable called sys.exit(0)"),
    "sys.exit(0), isolated": ({"worker": "tests.hopt_cli.trainables:exits_0", "interval_timeout": 30},
                              "the trainable called sys.exit(0)"),
    "returned None": ({"worker": "tests.hopt_cli.trainables:returns_none"},
                      "the trainable returned None; return the score (score) or a dict of metrics holding 'score'"),
    "command exit status": (command("echo 'CUDA error: out of memory' >&2; exit 3"),
                            "command exited with status 3: CUDA error: out of memory"),
    "command without metrics.json": (command("exit 0"), "the command wrote no metrics.json into {out}"),
    "command nan metric": (command("""printf '{{"score": NaN}}' > {out}/metrics.json; exit 0"""),
                           "metric 'score' is nan"),
    "command hang past interval_timeout": ({**command("sleep 60"), "interval_timeout": 0.5},
                                           "the command ran longer than interval_timeout (0.5 s) and was killed"),
}


@pytest.mark.parametrize(("overrides", "error"), CASES.values(), ids=CASES.keys())
def test_a_failing_member_is_journaled_retried_a_bounded_number_of_times_then_stops(tmp_path, overrides, error):
    recipe = toy_recipe(population=2, intervals=3, max_failures=2, **overrides)
    store = Store.create(tmp_path / "exp", Recipe.from_dict({k: v for k, v in recipe.items() if v is not None}))
    failing = 1 if "nan_for_member_1" in str(overrides.get("worker")) else 0

    with pytest.raises(ExperimentFailed) as caught:
        Worker(store, "w").run()

    message = str(caught.value)
    assert message.startswith(f"member {failing} failed 2 times in a row; last error: {error}")
    assert "\n" not in message
    fails = [e for e in store.read_events()[0] if isinstance(e, Fail)]
    assert [e.member for e in fails] == [failing, failing]
    assert all(error in e.reason for e in fails)
    assert not list(store.paths.leases.iterdir()) and not list(store.paths.staging.iterdir())


def test_a_worker_started_on_a_failed_experiment_stops_at_once(tmp_path):
    recipe = Recipe.from_dict(toy_recipe(population=2, intervals=3, max_failures=1,
                                         worker="tests.hopt_cli.trainables:raises"))
    store = Store.create(tmp_path / "exp", recipe)
    with pytest.raises(ExperimentFailed):
        Worker(store, "first").run()
    size = store.paths.journal.stat().st_size

    with pytest.raises(ExperimentFailed, match="member 0 failed 1 times in a row.*`hopt retry`"):
        Worker(Store.open(tmp_path / "exp"), "second").run()
    assert store.paths.journal.stat().st_size == size


def test_retry_after_a_fix_lets_the_experiment_finish(tmp_path):
    recipe = toy_recipe(population=2, intervals=3, max_failures=1, worker="tests.hopt_cli.trainables:raises")
    with pytest.raises(ExperimentFailed):
        Worker(Store.create(tmp_path / "exp", Recipe.from_dict(recipe)), "broken").run()
    store = Store.open(tmp_path / "exp")

    assert store.retry() and not store.retry()
    Worker(store, "fixed", trainable=pbt_quadratic).run()

    assert store.sync().complete and store.population.failed is None


def test_a_child_that_died_between_intervals_is_replaced(tmp_path):
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(population=2, intervals=3, interval_timeout=60)))
    worker = Worker(store, "w")
    worker.train_and_commit(worker.claim())
    worker.trainable._process.kill()  # e.g. the kernel's OOM killer, while the worker was committing
    worker.trainable._process.wait()

    report = worker.run()

    assert report.complete and report.failures == 0


CUDA_ERROR = "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_a_cuda_error_in_an_isolated_child_fails_the_interval_once_and_a_fresh_child_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPT_TEST_MARKER", str(tmp_path / "marker"))
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(
        population=2, intervals=3, max_failures=2, interval_timeout=60,
        worker="tests.hopt_cli.trainables:cuda_error_once")))

    report = Worker(store, "w").run()

    assert report.complete and report.failures == 1
    fails = [e for e in store.read_events()[0] if isinstance(e, Fail)]
    assert len(fails) == 1 and fails[0].reason.startswith(CUDA_ERROR)


def test_a_cuda_error_in_the_workers_own_process_fails_its_member_once_and_stops_the_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPT_TEST_MARKER", str(tmp_path / "marker"))
    store = Store.create(tmp_path / "exp", Recipe.from_dict(toy_recipe(
        population=2, intervals=3, max_failures=2, worker="tests.hopt_cli.trainables:cuda_error_once")))

    with pytest.raises(ProcessPoisoned) as caught:
        Worker(store, "w").run()

    assert caught.value.exit_code == 3 and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"member 0 interval 1 failed with a CUDA error ({CUDA_ERROR}")
    assert "after which every CUDA call of this process fails: this worker stops" in str(caught.value)
    fails = [e for e in store.read_events()[0] if isinstance(e, Fail)]
    assert [e.member for e in fails] == [0] and fails[0].reason.startswith(CUDA_ERROR)
    assert not list(store.paths.leases.iterdir()) and store.sync().failed is None


def saves_into_its_parent_too(ctx):
    """A trainable with a bug: it also saves its new state into the checkpoint it resumed from."""
    result = pbt_quadratic(ctx)
    if ctx.parent is not None:
        shutil.copy(ctx.out / "state.json", ctx.parent / "state.json")
    return result


def test_a_trainable_that_writes_into_its_parent_fails_its_interval_naming_itself_and_the_folder(tmp_path):
    trainable = "tests.hopt_cli.test_failures:saves_into_its_parent_too"
    recipe = Recipe.from_dict(toy_recipe(population=2, intervals=3, max_failures=1, worker=trainable))
    store = Store.create(tmp_path / "exp", recipe)

    with pytest.raises(ExperimentFailed) as caught:
        Worker(store, "w").run()

    journal = store.read_events()[0]
    fail = next(e for e in journal if isinstance(e, Fail))
    claim = next(e for e in journal if isinstance(e, Claim) and e.token == fail.token)
    parent = store.paths.checkpoint(claim.decision.checkpoint)
    assert fail.reason == (f"the trainable {trainable} wrote into its parent checkpoint {parent} (ctx.parent), which "
                           "must stay as it was committed: write only into ctx.out")
    assert str(caught.value).startswith(f"member {fail.member} failed 1 times in a row; last error: {fail.reason}; ")

"""Checkpoint digests: recorded at commit, checked at export, so a checkpoint changed after its commit
is never exported as the result; experiments from before digests still export."""
from __future__ import annotations

import os
import shutil

import pytest

from hopt_cli.events import Commit
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.store.digest import checkpoint_digest, folder_state
from hopt_cli.worker import Worker
from tests.commands import invoke
from tests.conftest import REPO, toy_recipe

FORMAT_1 = REPO / "tests" / "data" / "format-1"


def test_the_digest_follows_names_and_content_and_the_state_follows_any_write(tmp_path):
    folder = tmp_path / "checkpoint"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "sub" / "optim.pt").write_bytes(b"moments")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # new mtimes, same content
    digest, state = checkpoint_digest(folder), folder_state(folder)

    assert digest == checkpoint_digest(copy) and digest.startswith("sha256:")
    (copy / "sub" / "optim.pt").rename(copy / "sub" / "optim2.pt")
    assert checkpoint_digest(copy) != digest
    (folder / "model.pt").write_bytes(b"weighty")
    assert checkpoint_digest(folder) != digest and folder_state(folder) != state
    state = folder_state(folder)
    (folder / "sub" / "scratch").touch()
    (folder / "sub" / "scratch").unlink()
    assert folder_state(folder) != state


def finished(root, **overrides) -> Store:
    """A toy experiment run to the end in this process."""
    store = Store.create(root, Recipe.from_dict(toy_recipe(population=3, intervals=2, keep_best=2, **overrides)))
    assert Worker(store, "w").run().complete
    return store


def test_every_commit_records_its_checkpoints_digest(tmp_path):
    store = finished(tmp_path / "exp")

    commits = [e for e in store.read_events()[0] if isinstance(e, Commit)]
    kept = [c for c in commits if store.paths.checkpoint(c.checkpoint).is_dir()]
    assert kept and all(c.digest == checkpoint_digest(store.paths.checkpoint(c.checkpoint)) for c in kept)


@pytest.mark.parametrize("how", [["--out"], ["--top", "2", "--out"]], ids=["best", "top"])
def test_an_export_refuses_a_checkpoint_changed_after_its_commit_and_names_it(tmp_path, how):
    store = finished(tmp_path / "exp")
    best = store.sync().best
    changed = store.paths.checkpoint(best[-1].checkpoint if "--top" in how else best[0].checkpoint)
    (changed / "state.json").write_text('{"theta": [0.0, 0.0]}')
    out = tmp_path / "out"

    result = invoke("best", "--dir", str(store.paths.root), *how, str(out))

    assert result.exit_code == 1, result.output
    entry = next(b for b in best if b.checkpoint == changed.name)
    assert result.stderr == (
        f"hopt: error: {changed}: changed after member {entry.member} interval {entry.interval} committed it (its "
        "content no longer matches the digest recorded then): the trainable workers.toys:pbt_quadratic wrote into it "
        "while resuming from it as ctx.parent (the workers' logs name the interval), or something outside hopt did; "
        "export another interval (`hopt best --top K` or `--member M`), and make the trainable write only into "
        "ctx.out\n")
    assert not out.exists()
    unchanged = next(b for b in best if b.checkpoint != changed.name)
    assert invoke("best", "--dir", str(store.paths.root), "--member", str(unchanged.member), "--out",
                  str(out)).exit_code == 0


def test_an_experiment_from_before_digests_still_exports(tmp_path):
    root = tmp_path / "exp"
    shutil.copytree(FORMAT_1, root, ignore=shutil.ignore_patterns("README.md"))

    result = invoke("best", "--dir", str(root), "--top", "2", "--out", str(tmp_path / "out"))

    assert result.exit_code == 0, result.output
    assert os.listdir(tmp_path / "out" / "rank-2" / "checkpoint")

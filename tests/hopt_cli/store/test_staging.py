"""Staging folders and parent checkpoints, as the worker looks at them around an interval."""
from __future__ import annotations

from hopt_cli.store.digest import checkpoint_digest
from hopt_cli.worker import Worker


def test_a_staging_folder_is_made_empty_and_looked_at_once_trained(make_store, tmp_path):
    store = make_store(tmp_path / "exp", population=2, intervals=2)
    claim = Worker(store, "w").claim()

    folder = store.staging.make(claim.lease)
    assert folder == store.paths.staging_dir(claim.lease.token) and not any(folder.iterdir())
    assert store.staging.look(folder, digest=False).empty
    (folder / "weights.bin").write_bytes(b"\x00" * 10)
    staged = store.staging.look(folder, digest=True)
    assert not staged.empty and staged.digest == checkpoint_digest(folder)
    (folder / "weights.bin").unlink()
    folder.rmdir()
    assert store.staging.look(folder, digest=True) is None  # the trainable removed ctx.out


def test_a_parent_checkpoint_state_changes_with_a_write_and_is_none_when_missing(make_store, tmp_path):
    store = make_store(tmp_path / "exp", population=2, intervals=2)
    assert store.staging.parent(None) is None
    parent = store.staging.parent("m00000-i00000-abc")
    assert parent == store.paths.checkpoint("m00000-i00000-abc") and store.staging.state(parent) is None

    parent.mkdir()
    before = store.staging.state(parent)
    (parent / "weights.bin").write_bytes(b"1")
    assert before is not None and store.staging.state(parent) != before  # a new entry, whatever the mtimes

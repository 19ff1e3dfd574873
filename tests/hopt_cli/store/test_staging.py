"""Staging folders and parent checkpoints, as the worker looks at them around an interval."""
from __future__ import annotations

from hopt_cli.store.digest import checkpoint_digest
from hopt_cli.worker import Worker


def test_a_staging_folder_is_made_empty_and_looked_at_once_trained(make_store, tmp_path):
    store = make_store(tmp_path / "exp", population=2, intervals=2)
    claim = Worker(store, "w").claim()

    folder = store.staging.make(claim.lease)
    assert folder == store.paths.staging_dir(claim.lease.token)
    assert store.staging.present(folder) and store.staging.empty(folder)
    (folder / "weights.bin").write_bytes(b"\x00" * 10)
    assert not store.staging.empty(folder) and store.staging.digest(folder) == checkpoint_digest(folder)
    (folder / "weights.bin").unlink()
    folder.rmdir()
    assert not store.staging.present(folder)  # the trainable removed ctx.out


def test_a_parent_checkpoint_is_found_by_name_and_its_state_changes_with_a_write(make_store, tmp_path):
    store = make_store(tmp_path / "exp", population=2, intervals=2)
    assert store.staging.parent(None) is None
    parent = store.staging.parent("m00000-i00000-abc")
    assert parent == store.paths.checkpoint("m00000-i00000-abc") and not store.staging.present(parent)

    parent.mkdir()
    before = store.staging.state(parent)
    (parent / "weights.bin").write_bytes(b"1")
    assert store.staging.present(parent) and store.staging.state(parent) != before  # a new entry, whatever the mtimes

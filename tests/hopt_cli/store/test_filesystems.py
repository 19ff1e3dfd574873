"""The filesystems table: the verdict per filesystem type and mount options, the lock refusing flock on every
mount the table marks (mount entries the test provides, in /proc/self/mountinfo's format), and the table in
docs/robustness.md being the module's."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hopt_cli.errors import HoptError
from hopt_cli.store import mounts
from hopt_cli.store.filesystems import FILESYSTEMS, judge, markdown
from hopt_cli.store.locking import make_lock
from hopt_cli.store.mounts import Mount, mount_of
from hopt_cli.store.paths import ExperimentPaths
from tests.conftest import REPO


def mountinfo(tmp_path: Path, *entries: tuple[str, str, str, str]) -> Path:
    """A file in /proc/self/mountinfo's format: the root filesystem, then each (point, type, source, options)."""
    lines = ["22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"]
    for number, (point, fstype, source, options) in enumerate(entries, start=40):
        lines.append(f"{number} 22 0:{number} / {point.replace(' ', chr(92) + '040')} rw,relatime shared:{number} - "
                     f"{fstype} {source} {options}")
    table = tmp_path / "mountinfo"
    table.write_text("\n".join(lines) + "\n")
    return table


@pytest.mark.parametrize(("fstype", "options", "flock", "words"), [
    ("fuse.sshfs", "rw,user_id=0", False, "use `lock: hardlink`"),
    ("fuse.glusterfs", "rw,allow_other", True, "either lock kind works"),
    ("nfs4", "rw,vers=4.2,local_lock=none,addr=10.0.0.1", True, "NFS lock manager"),
    ("nfs", "rw,vers=3,local_lock=flock", False, "mounted with local_lock=flock"),
    ("nfs", "rw,vers=3,nolock,local_lock=all", False, "use `lock: hardlink`"),
    ("lustre", "rw,flock,lazystatfs", True, "mounted with -o flock"),
    ("lustre", "rw,localflock", False, "mounted with -o localflock"),
    ("lustre", "rw,lazystatfs", False, "mounted without -o flock"),
    ("gpfs", "rw", True, "GPFS"),
    ("ceph", "rw,name=admin", True, "CephFS"),
    ("ext4", "rw,relatime", True, "a local filesystem: workers on other nodes cannot share it"),
    ("tmpfs", "rw", True, "on this machine only"),
    ("fuse.weirdfs", "rw", None, "hopt doctor --peer"),
])
def test_advice_per_filesystem_type(fstype, options, flock, words):
    verdict = judge(Mount("/shared", fstype, "server:/export", options))

    assert verdict.flock is flock and words in verdict.advice
    assert (verdict.problem is not None) == (flock is False)  # the lock refuses exactly where flock does not exclude


def test_beegfs_flock_is_trusted_only_where_the_client_config_makes_it_global(tmp_path):
    config = tmp_path / "beegfs-client.conf"
    mount = Mount("/beegfs", "beegfs", "beegfs_nodev", f"rw,relatime,cfgFile={config}")
    config.write_text("sysMgmtdHost = mgmt\ntuneUseGlobalFileLocks = false\n")
    assert judge(mount).flock is False and "tuneUseGlobalFileLocks = true" in judge(mount).advice

    config.write_text("sysMgmtdHost = mgmt\ntuneUseGlobalFileLocks        = true  # across nodes\n")
    assert judge(mount).flock is True

    config.unlink()
    assert judge(mount).flock is False and "cannot read" in judge(mount).advice


def test_the_mount_of_a_path_is_the_longest_mount_point_above_it(tmp_path):
    shared = Path(os.path.realpath(tmp_path)) / "a dir"
    table = mountinfo(tmp_path, (str(shared.parent), "nfs4", "server:/", "rw"), (str(shared), "lustre", "mgs:/fs",
                                                                                    "rw,flock"))
    (shared / "exp").mkdir(parents=True)

    mount = mount_of(shared / "exp", table)

    assert mount == Mount(str(shared), "lustre", "mgs:/fs", "rw,relatime,rw,flock")
    assert mount_of(tmp_path, table).fstype == "nfs4"


REFUSED = [
    ("fuse.sshfs", "rw,user_id=0,group_id=0", "flock does not exclude across sshfs mounts"),
    ("nfs", "rw,vers=3,local_lock=all,addr=10.0.0.1", "mounted with local_lock=all"),
    ("nfs4", "rw,vers=4.2,local_lock=flock,addr=10.0.0.1", "mounted with local_lock=flock"),
    ("nfs", "rw,vers=3,nolock", "mounted with nolock"),
    ("lustre", "rw,lazystatfs", "mounted without -o flock"),
    ("lustre", "rw,localflock", "mounted with -o localflock"),
    ("beegfs", "rw,cfgFile={config}", "tuneUseGlobalFileLocks = true"),
]
ACCEPTED = [
    ("nfs4", "rw,vers=4.2,local_lock=none,addr=10.0.0.1"),
    ("lustre", "rw,flock,lazystatfs"),
    ("beegfs", "rw,cfgFile={global_config}"),
    ("fuse.glusterfs", "rw,allow_other"),
    ("ext4", "rw"),
    ("fuse.weirdfs", "rw"),  # nothing is known against it: `hopt doctor --peer` tells
]


def _experiment_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str, options: str) -> ExperimentPaths:
    """A directory that the provided mount table puts on a mount of `fstype` with `options`."""
    (tmp_path / "local.conf").write_text("tuneUseGlobalFileLocks = false\n")
    (tmp_path / "global.conf").write_text("tuneUseGlobalFileLocks = true\n")
    options = options.format(config=tmp_path / "local.conf", global_config=tmp_path / "global.conf")
    root = Path(os.path.realpath(tmp_path)) / "shared"
    root.mkdir()
    monkeypatch.setattr(mounts, "MOUNTINFO", mountinfo(tmp_path, (str(root), fstype, "server:/export", options)))
    return ExperimentPaths(root)


@pytest.mark.parametrize(("fstype", "options", "why"), REFUSED, ids=[f"{t} {o}" for t, o, _ in REFUSED])
def test_flock_is_refused_wherever_the_table_says_it_does_not_exclude(tmp_path, monkeypatch, fstype, options, why):
    paths = _experiment_on(tmp_path, monkeypatch, fstype, options)

    with pytest.raises(HoptError) as refused:
        with make_lock("flock", paths, timeout=5):
            pass

    message = str(refused.value)
    assert message.startswith(f"{paths.root}: ") and why in message and "use `lock: hardlink`" in message
    assert "\n" not in message and not paths.lock.exists()  # one line, and nothing written
    with make_lock("hardlink", paths, timeout=5):  # the kind it names works there
        assert paths.hardlink_lock.exists()


@pytest.mark.parametrize(("fstype", "options"), ACCEPTED, ids=[f"{t} {o}" for t, o in ACCEPTED])
def test_flock_is_taken_where_the_table_knows_nothing_against_it(tmp_path, monkeypatch, fstype, options):
    paths = _experiment_on(tmp_path, monkeypatch, fstype, options)

    with make_lock("flock", paths, timeout=5):
        assert paths.lock.exists()


def test_every_type_has_one_row_and_every_row_judges_its_types():
    types = [fstype for fs in FILESYSTEMS for fstype in fs.types]
    assert len(types) == len(set(types))
    for fs in FILESYSTEMS:
        assert all(judge(Mount("/x", fstype, "src", "rw")).advice for fstype in fs.types)


def test_the_docs_show_the_table_of_the_module():
    page = (REPO / "docs" / "robustness.md").read_text()

    assert markdown() in page, "docs/robustness.md must hold filesystems.markdown() as it is now: paste it there"

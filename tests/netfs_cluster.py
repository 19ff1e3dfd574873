"""Helpers for the tests that run hopt on real network filesystems, and as several "nodes" of one machine.

tests/netfs/start-netfs.sh mounts, all served from 127.0.0.1 (see tests/netfs/README.md):

- GlusterFS volume `hopt`, FUSE-mounted twice: /mnt/hopt-gluster-a and /mnt/hopt-gluster-b;
- one directory over sshfs (SFTP), mounted four times: /mnt/hopt-sshfs-a and /mnt/hopt-sshfs-b with
  sshfs's default caching, /mnt/hopt-sshfs-nocache and /mnt/hopt-sshfs-nocache-b with
  `dir_cache=no,attr_timeout=0,entry_timeout=0`.

Two mounts of one filesystem behave like that filesystem seen from two machines: separate FUSE
connections, separate kernel caches (page cache, dentries, attributes), separate lock tables where the
filesystem does not share them (sshfs: flock on one mount does not exclude the other; see the README).

What a test uses:

- `netfs` (session fixture): skips unless every mount answers; with CI=true it fails instead.
- `make_shared_dir(kind)` (fixture, a factory) or `shared_dir` (fixture, parametrized with
  `@pytest.mark.parametrize("shared_dir", KINDS, indirect=True)` or `@for_each_netfs`): a fresh,
  empty directory seen through both mounts of a kind, removed after the test.
- `node_popen(hostname, argv)`: a process in its own UTS + PID (+ mount, for /proc) namespace, with
  its own hostname, i.e. a process on another "node"; `node_signal`, `node_kill`, `node_pids`.
- `wait_until(condition, timeout, what)`: a bounded poll that returns how long it took.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

START_SCRIPT = "tests/netfs/start-netfs.sh"


@dataclass(frozen=True)
class Mounts:
    """The two mount points a kind of shared directory is seen through, and the type /proc/mounts gives."""

    a: Path
    b: Path
    fstype: str


MOUNTS: dict[str, Mounts] = {
    # GlusterFS (FUSE client, default options: 1 s attribute/entry timeouts, md-cache, write-behind...).
    "glusterfs": Mounts(Path("/mnt/hopt-gluster-a"), Path("/mnt/hopt-gluster-b"), "fuse.glusterfs"),
    # sshfs with its default caching on both sides (dir cache of 20 s, 1 s attribute/entry timeouts).
    "sshfs": Mounts(Path("/mnt/hopt-sshfs-a"), Path("/mnt/hopt-sshfs-b"), "fuse.sshfs"),
    # sshfs without any cache on both sides: two distinct mounts (so flock still does not cross them,
    # as on two machines), each with dir_cache=no,attr_timeout=0,entry_timeout=0.
    "sshfs-nocache": Mounts(Path("/mnt/hopt-sshfs-nocache"), Path("/mnt/hopt-sshfs-nocache-b"), "fuse.sshfs"),
}
KINDS: tuple[str, ...] = tuple(MOUNTS)
# Where a kind's directories are removed after the test: a mount that lists what the other one wrote
# (sshfs's default dir cache may hide files for 20 s; the nocache mount serves the same export).
_CLEANUP_ROOT = {"glusterfs": MOUNTS["glusterfs"].a, "sshfs": MOUNTS["sshfs-nocache"].a,
                 "sshfs-nocache": MOUNTS["sshfs-nocache"].a}
TEST_ROOT = "hopt-tests"  # every test's directories are under <mount>/hopt-tests/

# Run in a subprocess, so that a hung FUSE mount cannot hang pytest: writes a file through each `a`
# mount, waits (bounded) to read it through `b`, removes it; prints what went wrong, exits 1.
_PROBE = r"""
import os, sys, time
token, pairs = sys.argv[1], sys.argv[2:]
for a, b in zip(pairs[::2], pairs[1::2]):
    name = f".hopt-netfs-probe-{token}"
    try:
        with open(os.path.join(a, name), "w") as f:
            f.write(token)
        deadline = time.monotonic() + 10
        while True:
            try:
                with open(os.path.join(b, name)) as f:
                    if f.read() == token:
                        break
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"a file written through {a} is not visible through {b} after 10 s")
            time.sleep(0.05)
        os.unlink(os.path.join(a, name))
    except OSError as err:
        sys.exit(f"{a} / {b}: {err}")
"""


def mount_problems() -> list[str]:
    """Why the netfs mounts are not usable (empty when they all answer); never blocks for long."""
    if os.geteuid() != 0:
        return ["not root (node_popen needs namespaces; the mounts are root's)"]
    mounted: dict[str, str] = {}
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                mounted[fields[1].replace("\\040", " ")] = fields[2]
    missing = [f"{path} ({m.fstype})" for m in MOUNTS.values() for path in (m.a, m.b)
               if mounted.get(str(path)) != m.fstype]
    if missing:
        return [f"not mounted: {', '.join(missing)}"]
    pairs = [str(path) for m in MOUNTS.values() for path in (m.a, m.b)]
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, f"{os.getpid()}-{uuid.uuid4().hex[:8]}", *pairs],
                               capture_output=True, text=True, timeout=40)
    except subprocess.TimeoutExpired:
        return ["the mounts did not answer within 40 s (a hung FUSE mount?)"]
    if probe.returncode != 0:
        return [probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"probe exited {probe.returncode}"]
    if shutil.which("unshare") is None:
        return ["unshare (util-linux) is missing"]
    return []


@pytest.fixture(scope="session")
def netfs() -> dict[str, Mounts]:
    """Skip unless every netfs mount answers (checked once); with CI=true, fail instead.

    Returns MOUNTS. Checked: running as root, all six mounts present with the right type, a file
    written through each kind's `a` mount read back through its `b` mount within 10 s, `unshare` there.
    """
    problems = mount_problems()
    if problems:
        message = f"the netfs test mounts are not usable ({'; '.join(problems)}); run {START_SCRIPT} as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return MOUNTS


@dataclass(frozen=True)
class SharedDir:
    """One fresh directory on a network filesystem, seen through two mounts ("two machines").

    `name` is its path relative to the mount roots (the same on both), `a` and `b` the directory
    through each mount; `kind` is one of KINDS. Write through one and read through the other to see
    what a second machine would see.
    """

    kind: str
    name: str
    a: Path
    b: Path

    def through(self, side: str) -> Path:
        """The directory through mount "a" or "b"."""
        return {"a": self.a, "b": self.b}[side]


def _test_dir_name(nodeid: str) -> str:
    short = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid.split("::", 1)[-1])[:60].strip("-.") or "test"
    return f"{TEST_ROOT}/{short}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.01) -> float:
    """Poll `condition` until it is true and return the seconds that took; fail the test after `timeout`.

    An OSError from `condition` (ENOENT, ESTALE, ...) counts as false.
    """
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def _remove_tree(path: Path, timeout: float = 15.0) -> bool:
    """rmtree, retried while caches still show (or hide) entries; True when gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
            continue
        if not os.path.lexists(path):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


@pytest.fixture
def make_shared_dir(netfs: dict[str, Mounts], request: pytest.FixtureRequest) -> Iterator[Callable[[str], SharedDir]]:
    """A factory: `make_shared_dir(kind)` returns a new, empty SharedDir of that kind (one of KINDS).

    Each call makes a new directory under <mount>/hopt-tests/<test>-<pid>-<random>/, created through
    `a` and already visible through `b` when returned. After the test every directory the factory made
    is removed (a warning, not an error, if something still holds files there).
    """
    base = _test_dir_name(request.node.nodeid)
    counter = itertools.count()
    made: set[str] = set()

    def make(kind: str) -> SharedDir:
        if kind not in MOUNTS:
            raise ValueError(f"unknown netfs kind {kind!r}; one of {', '.join(KINDS)}")
        mounts = MOUNTS[kind]
        name = f"{base}/{kind}-{next(counter)}"
        (mounts.a / name).mkdir(parents=True)
        made.add(kind)
        wait_until(lambda: (mounts.b / name).is_dir(), 30, f"{mounts.a / name} to appear through {mounts.b}")
        return SharedDir(kind, name, mounts.a / name, mounts.b / name)

    yield make
    for kind in sorted(made):
        root = _CLEANUP_ROOT[kind]
        if not _remove_tree(root / base):
            warnings.warn(f"could not remove {root / base} after the test", stacklevel=1)


@pytest.fixture
def shared_dir(make_shared_dir: Callable[[str], SharedDir], request: pytest.FixtureRequest) -> SharedDir:
    """A new, empty SharedDir of the kind the test is parametrized with (indirect), e.g. `@for_each_netfs`."""
    kind = getattr(request, "param", None)
    if kind is None:
        raise pytest.UsageError('shared_dir needs a kind: @pytest.mark.parametrize("shared_dir", KINDS, indirect=True)')
    return make_shared_dir(kind)


#: Run a test once per kind of shared directory, getting it as the `shared_dir` argument.
for_each_netfs = pytest.mark.parametrize("shared_dir", KINDS, indirect=True)


# ------------------------------------------------------------------------------------------- nodes

# The init of a node's PID namespace (pid 1 there): sets the hostname, starts the command (from
# $HOPT_NODE_ARGV, so that it is not in every `ps` line of the node twice) as pid 2, forwards signals to
# it (pid 1 would otherwise ignore every signal it has no handler for), reaps orphans, and exits with the
# command's status (128 + N when signal N killed it); the kernel then kills whatever else still runs in
# the namespace, as when a machine goes away.
_NODE_INIT = r"""# the init of a node_popen node (tests/netfs_cluster.py)
import json, os, signal, socket, sys
socket.sethostname(sys.argv[1])
argv = json.loads(os.environ.pop("HOPT_NODE_ARGV"))
FORWARD = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGALRM, signal.SIGCONT, signal.SIGTSTP, signal.SIGWINCH]
signal.pthread_sigmask(signal.SIG_BLOCK, FORWARD)
child = os.fork()
if child == 0:
    for sig in FORWARD + [signal.SIGPIPE, signal.SIGXFSZ]:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        print(f"node_popen: cannot run {argv[0]}: {err}", file=sys.stderr, flush=True)
        os._exit(127)
def forward(sig, frame):
    try:
        os.kill(child, sig)
    except ProcessLookupError:
        pass
for sig in FORWARD:
    signal.signal(sig, forward)
signal.pthread_sigmask(signal.SIG_SETMASK, [])
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        os._exit(0)
    if pid == child:
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


def _node_init_file() -> str:
    """The init script as a file (written once per content), so that `ps` shows a short command line."""
    path = Path(tempfile.gettempdir()) / f"hopt-node-init-{hashlib.sha256(_NODE_INIT.encode()).hexdigest()[:12]}.py"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(_NODE_INIT)
        os.replace(tmp, path)
    return str(path)


def node_popen(hostname: str, argv: Sequence[str | os.PathLike[str]], **popen_kwargs) -> subprocess.Popen:
    """Start `argv` as the main process of a new "node": its own UTS, PID and mount namespaces.

    Inside, `socket.gethostname()` is `hostname`, the command is pid 2 (a small init is pid 1) and
    /proc shows only the node's processes. Filesystems, network, users are this machine's: the node
    starts with a copy of the mount table, the netfs mounts included (a private copy: mounting or
    unmounting here later does not reach a running node, nor the other way round). `popen_kwargs` go
    to subprocess.Popen unchanged (cwd, env, stdout, ...; `env` gets one more variable, which the init
    removes again). Needs root.

    The returned Popen is `unshare`, our child: SIGKILL to it (`node_kill`) ends the whole node at once
    (unshare --kill-child kills the init, and with it everything in the namespace), like a machine that
    loses power. Other signals sent to the Popen itself are ignored by unshare: use `node_signal`.
    `returncode` is the command's exit status, 128 + N when signal N killed it, -9 after `node_kill`.
    In `ps`, a node is `unshare ... python /tmp/hopt-node-init-*.py HOSTNAME` twice (unshare, init),
    then the command with its own command line.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", hostname):
        raise ValueError(f"not a usable hostname: {hostname!r}")
    env = popen_kwargs.pop("env", None)
    env = dict(os.environ if env is None else env)
    env["HOPT_NODE_ARGV"] = json.dumps([os.fspath(arg) for arg in argv])
    command = ["unshare", "--uts", "--pid", "--mount", "--mount-proc", "--fork", "--kill-child", "--",
               sys.executable, _node_init_file(), hostname]
    return subprocess.Popen(command, env=env, **popen_kwargs)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def node_pids(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, int]:
    """(init, main): the pids, as seen from here, of a node's init and of its command (pid 2 inside).

    Waits (up to `timeout` s) for the node to have started them; raises ProcessLookupError when the
    node has ended (or did not get that far in time).
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ProcessLookupError(f"node {proc.pid} has ended (returncode {proc.returncode})")
        inits = _children(proc.pid)
        if inits:
            mains = _children(inits[0])
            if mains:
                return inits[0], mains[0]
        if time.monotonic() > deadline:
            raise ProcessLookupError(f"node {proc.pid} has not started its command after {timeout:g} s")
        time.sleep(0.01)


def node_signal(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to a node's command (its main process), as `kill <pid>` on that machine would.

    When the command ends (SIGKILL, or SIGTERM without a handler...), the node's init exits with its
    status (128 + N for signal N) and the node ends. (Signals sent to the init itself are forwarded to
    the command too, except SIGKILL and SIGSTOP.)
    """
    _init, main = node_pids(proc)
    os.kill(main, sig)


def node_kill(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """End a whole node at once with SIGKILL (its init and every process inside) and reap it.

    Returns the Popen's returncode (-9 unless it had already ended). Idempotent.
    """
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    return proc.wait(timeout=timeout)

"""`hopt doctor --peer`: what two nodes test together once they met (meeting.py), and the lines both print."""
from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hopt_cli.doctor.local import LOCK_SECONDS, TRY_SECONDS, Advice, Check
from hopt_cli.doctor.meeting import POLL_SECONDS, ROLES, Channel, NoPeer, Node, PeerLost, meet
from hopt_cli.errors import HoptError, LockTimeout
from hopt_cli.recipe import LOCK_KINDS
from hopt_cli.store.fsio import append_line, read_bytes, touch, write_atomic
from hopt_cli.store.locking import ExperimentLock

STEP_SECONDS = 30.0  # the other node's share of a step, besides the waits the step itself has
APPEND_SECONDS = 5.0  # for an append to show after the lock changed hands (and a setattr)
LISTING_SECONDS = 30.0  # for a new file to show in the other node's listing (sshfs caches listings for 20 s)
REPLACE_SECONDS = 10.0  # for a replaced file's new content to show in the other node's reads
AT_ONCE = 0.05  # seconds: a delay below this is reported as "at once"
SLOW = 2.0  # seconds: a delay above this gets an explanation


def across_nodes(root: Path, clock: Path, timeout: float) -> Iterator[Check | Advice]:
    """The --peer checks: meet the other node, test both lock kinds, appends, listings and replaces with
    it, and say which lock kind to use. Both nodes print the same lines for what they tested together."""
    me = Node.here(root)
    started = time.monotonic()
    try:
        channel = meet(root, clock, me, timeout)
    except NoPeer:
        yield Check("peer", False, f"no peer showed up in {timeout:g} s: start `hopt doctor --peer --dir D` on "
                                   "another node at the same time (e.g. `srun -N2 hopt doctor --peer --dir D`)")
        return
    other = channel.nodes[channel.other]
    same_host = me.host == other.host
    where = f"{other.dir} on {other.fstype}"
    if same_host:
        yield Check("peer", False, f"met pid {other.pid} ({where}) on this same host {me.host}: nothing here "
                                   "crosses nodes; start the two on different nodes (e.g. `srun -N2 ...`)")
    else:
        yield Check("peer", True, f"{me.host} ({me.dir}) met {other.host} ({where}) after "
                                  f"{time.monotonic() - started:.1f} s")
    excludes: dict[str, bool] = {}
    try:
        for kind in LOCK_KINDS:
            rounds = {holder: lock_round(channel, kind, holder) for holder in ROLES}
            exclusion = exclusion_check(kind, rounds, channel.names)
            excludes[kind] = exclusion.ok
            yield exclusion
            yield append_check(kind, rounds, channel.names)
        yield listing_check(listing_test(channel), channel.names)
        yield replace_check(replace_test(channel), channel.names)
    except PeerLost as lost:
        yield Check("peer", False, f"{channel.names[channel.other]} stopped answering ({lost}); the checks after "
                                   "this one did not run")
    finally:
        channel.leave()
    if len(excludes) == len(LOCK_KINDS):
        yield recommendation(excludes, me.host if same_host else None)


def recommendation(excludes: dict[str, bool], one_host: str | None) -> Advice:
    """The lock kind to use: flock when it excludes across the nodes (the kernel releases it when its
    holder dies), else hardlink when that does."""
    if one_host is not None:
        return Advice(f"no lock kind recommended: both processes ran on {one_host}")
    if excludes.get("flock"):
        return Advice("use lock: flock (it excludes across these nodes, and the kernel releases it when its "
                      "holder dies)")
    if excludes.get("hardlink"):
        return Advice("use lock: hardlink (flock does not exclude across these nodes)")
    return Advice("no lock kind excludes across these nodes: they cannot share an experiment directory here",
                  ok=False)



def _wait(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `condition()` held (an OSError counts as not yet); None after `timeout`."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(OSError):
            if condition():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        time.sleep(POLL_SECONDS)


# The tests the two run together. Each returns, to both nodes, what the observing node saw.

def lock_round(channel: Channel, kind: str, holder: str) -> dict[str, Any]:
    """`holder` takes the `kind` lock, the other node tries to take it too (it must not get it), the
    holder appends a line to a file and lets go, the other takes the lock and reads the line.

    What the observing node saw: `took` (it got the lock while it was held), `handoff` (seconds to take
    it after the release), `at_once` (the line was there at the first read) and `setattr` (else seconds
    until it showed after a setattr, as hopt makes under the lock), or `error`.
    """
    step = f"{kind}-{holder}"
    if channel.role == holder:
        _hold(channel, kind, step)
        return channel.hear(f"{step}-seen", STEP_SECONDS + TRY_SECONDS + LOCK_SECONDS + APPEND_SECONDS)
    seen = _observe(channel, kind, step)
    channel.say(f"{step}-seen", seen)
    return seen


def _hold(channel: Channel, kind: str, step: str) -> None:
    said_held = False
    line = f"{step} {secrets.token_hex(8)}"
    try:
        with channel.lock(kind, LOCK_SECONDS):
            channel.say(f"{step}-held", {})
            said_held = True
            channel.hear(f"{step}-tried", STEP_SECONDS + TRY_SECONDS)
            append_line(channel.folder / f"appended-{kind}", f"{line}\n".encode())
    except (HoptError, OSError) as err:  # LockTimeout included
        problem = f"{channel.names[channel.role]} could not {'append' if said_held else 'take it'}: {err}"
        channel.say(f"{step}-released" if said_held else f"{step}-held", {"error": problem})
        return
    channel.say(f"{step}-released", {"line": line})


def _observe(channel: Channel, kind: str, step: str) -> dict[str, Any]:
    me = channel.names[channel.role]
    data = channel.folder / f"appended-{kind}"
    held = channel.hear(f"{step}-held", STEP_SECONDS + LOCK_SECONDS)
    if "error" in held:
        return {"error": held["error"]}
    with contextlib.suppress(OSError):
        data.read_bytes()  # as a worker has read the journal before: the cache a stale view comes from
    took, problem = _try_lock(channel.lock(kind, TRY_SECONDS))
    channel.say(f"{step}-tried", {})
    released = channel.hear(f"{step}-released", STEP_SECONDS + APPEND_SECONDS)
    if problem is not None or "error" in released:
        return {"took": took, "error": problem or released["error"]}
    started = time.monotonic()
    try:
        with channel.lock(kind, LOCK_SECONDS):
            handoff = time.monotonic() - started
            shown = _read_line_after_handoff(data, released["line"])
    except LockTimeout:
        return {"took": took, "handoff": None}
    except (HoptError, OSError) as err:
        return {"took": took, "error": f"{me}: {err}"}
    return {"took": took, "handoff": handoff, **shown}


def _try_lock(lock: ExperimentLock) -> tuple[bool, str | None]:
    """(whether we got `lock`, released again at once; what went wrong, if anything but a timeout)."""
    try:
        with lock:
            return True, None
    except LockTimeout:
        return False, None
    except (HoptError, OSError) as err:
        return False, f"{err}"


def _read_line_after_handoff(data: Path, line: str) -> dict[str, Any]:
    """Whether `line` is in `data` at the first fresh read; else how long after a setattr it showed."""
    wanted = f"{line}\n".encode()
    if wanted in read_bytes(data):
        return {"at_once": True}
    touch(data)  # what hopt does under the lock: the setattr's reply refreshes a network client's cached size
    return {"at_once": False, "setattr": _wait(lambda: wanted in data.read_bytes(), APPEND_SECONDS)}


def listing_test(channel: Channel) -> dict[str, float | None]:
    """Each node lists a folder that only the other writes to, then the other creates a file in it: per
    node, seconds until it listed that file. (A node that created a file in a folder itself would have its
    client's cached listing of it dropped: the worst case is a reader.)"""
    mine, theirs = (channel.folder / f"listing-{role}" for role in (channel.role, channel.other))
    os.listdir(theirs)  # a listing this node has read before, as a worker has `leases/`
    channel.say("listing-read", {})
    channel.hear("listing-read", STEP_SECONDS)
    (mine / "new").touch()
    channel.say("listing-created", {})
    channel.hear("listing-created", STEP_SECONDS)
    delay = _wait(lambda: "new" in os.listdir(theirs), LISTING_SECONDS)
    channel.say("listing-seen", {"delay": delay})
    theirs_delay = channel.hear("listing-seen", STEP_SECONDS + LISTING_SECONDS)["delay"]
    return {role: delay if role == channel.role else theirs_delay for role in ROLES}


def replace_test(channel: Channel) -> dict[str, float | None]:
    """Each writes a file that the other reads, then replaces it: per node, seconds until it read the other's
    new content."""
    mine, theirs = (channel.folder / f"replaced-{role}" for role in (channel.role, channel.other))
    old, new = b"old " + secrets.token_hex(8).encode(), b"new " + secrets.token_hex(8).encode()
    write_atomic(mine, old)
    channel.say("replace-written", {"old": old.decode()})
    their_old = channel.hear("replace-written", STEP_SECONDS)["old"].encode()
    _wait(lambda: theirs.read_bytes() == their_old, STEP_SECONDS)  # read it once: what a cache would keep
    channel.say("replace-read", {})
    channel.hear("replace-read", STEP_SECONDS)
    write_atomic(mine, new)
    channel.say("replaced", {"new": new.decode()})
    their_new = channel.hear("replaced", STEP_SECONDS)["new"].encode()
    delay = _wait(lambda: theirs.read_bytes() == their_new, REPLACE_SECONDS)
    channel.say("replace-seen", {"delay": delay})
    theirs = channel.hear("replace-seen", STEP_SECONDS + REPLACE_SECONDS)["delay"]
    return {role: delay if role == channel.role else theirs for role in ROLES}


# Lines from what the two saw; both nodes compute the same ones.

def _after(seconds: float) -> str:
    return "at once" if seconds < AT_ONCE else f"after {seconds:.1f} s"


def exclusion_check(kind: str, rounds: dict[str, dict[str, Any]], names: dict[str, str]) -> Check:
    """Neither node may take the lock while the other holds it, and each must take it once released."""
    name = f"lock exclusion across nodes ({kind})"
    problems, handoffs = [], []
    for holder, seen in rounds.items():
        a, b = names[holder], names[ROLES[1 - ROLES.index(holder)]]
        if seen.get("took"):
            problems.append(f"{b} took it while {a} held it")
        if seen.get("error"):
            problems.append(seen["error"])
        elif "handoff" in seen and seen["handoff"] is None:
            problems.append(f"{b} could not take it within {LOCK_SECONDS:g} s after {a} released it")
        elif not seen.get("took"):
            handoffs.append(f"{1e3 * seen['handoff']:.0f} ms from {a} to {b}")
    if problems:
        fix = ("flock does not exclude across these nodes: use `lock: hardlink`" if kind == "flock" else
               "the hard-link lock does not work between these nodes")
        return Check(name, False, f"{'; '.join(problems)}: {fix}")
    host, guest = names["host"], names["guest"]
    return Check(name, True, f"{guest} could not take it while {host} held it, nor {host} while {guest} did; it "
                             f"changed hands in {' and '.join(handoffs)}")


def append_check(kind: str, rounds: dict[str, dict[str, Any]], names: dict[str, str]) -> Check:
    """A line appended under the lock must be read by the next holder (after a setattr, as hopt does)."""
    name = f"append seen after the lock changed hands ({kind})"
    seen_lines, problems = [], []
    for holder, seen in rounds.items():
        a, b = names[holder], names[ROLES[1 - ROLES.index(holder)]]
        if seen.get("error") or seen.get("handoff") is None:
            problems.append(f"untested from {a} to {b} (the lock did not change hands)")
        elif seen["at_once"]:
            seen_lines.append(f"{b} read {a}'s line at once")
        elif seen["setattr"] is not None:
            seen_lines.append(f"{b} read {a}'s line only after a setattr (which hopt makes under the lock), "
                              f"{_after(seen['setattr'])}")
        else:
            problems.append(f"{b} did not read {a}'s line, not even {APPEND_SECONDS:g} s after a setattr: a worker "
                            "there would decide on a stale journal")
    if problems:
        return Check(name, False, "; ".join(problems + seen_lines))
    return Check(name, True, "; ".join(seen_lines))


def listing_check(delays: dict[str, float | None], names: dict[str, str]) -> Check:
    """A file one node creates must show in the other's listing (within LISTING_SECONDS)."""
    return _freshness("readdir freshness", delays, names, "listed {a}'s new file", LISTING_SECONDS,
                      "a cached listing: hopt takes claims from the journal, not from listings, so this only "
                      "delays what listings drive: reclaiming leases, collecting leftovers, `hopt status`")


def replace_check(delays: dict[str, float | None], names: dict[str, str]) -> Check:
    """A file one node replaces must read new on the other (within REPLACE_SECONDS)."""
    return _freshness("freshness after a replace", delays, names, "read {a}'s new content", REPLACE_SECONDS,
                      "until then it read the old content: a cached entry")


def _freshness(name: str, delays: dict[str, float | None], names: dict[str, str], what: str, limit: float,
               slow: str) -> Check:
    parts, ok = [], True
    for reader, delay in delays.items():
        a, b = names[ROLES[1 - ROLES.index(reader)]], names[reader]
        done = what.format(a=a)
        if delay is None:
            ok = False
            parts.append(f"{b} had not {done} after {limit:g} s")
        else:
            parts.append(f"{b} {done} {_after(delay)}")
    detail = "; ".join(parts)
    if ok and max(delays.values()) > SLOW:
        detail += f" ({slow})"
    return Check(name, ok, detail)

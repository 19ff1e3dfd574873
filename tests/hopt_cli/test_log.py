"""`hopt log`: one readable line per journal event; exploits show the mutation, --member filters."""
from __future__ import annotations

import json
import re

from click.testing import CliRunner

from hopt_cli.cli import cli
from hopt_cli.text import shown as _fmt
from hopt_cli.worker import Worker
from tests.hopt_cli.conftest import mid_run, reclaimed_and_failed

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (\S+) +(claim|commit|adopt|fail|release|reclaim|retry) +(.*)$")


def log(*args: str) -> list[str]:
    result = CliRunner().invoke(cli, ["log", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_one_line_per_event_with_exploit_diffs(quadratic):
    lines = log("--dir", str(quadratic))
    raw = [json.loads(line) for line in (quadratic / "journal.jsonl").read_text().splitlines()]

    assert len(lines) == len(raw)
    hparams_of = {}
    exploits = 0
    for line, event in zip(lines, raw):
        match = LINE.match(line)
        assert match and match[1] == event["worker"] and match[2] == event["type"], line
        if event["type"] == "commit":
            hparams_of[event["checkpoint"]] = event["hparams"]
            assert f"member {event['member']} interval {event['interval']}: score {_fmt(event['score'])}" in line
        if event["type"] == "claim" and event["decision"]["action"] == "exploit":
            exploits += 1
            decision, before = event["decision"], hparams_of[event["decision"]["checkpoint"]]
            diff = ", ".join(f"{k} {_fmt(before[k])} \u2192 {_fmt(v)}" for k, v in event["hparams"].items()
                             if before[k] != v) or "no change"
            assert match[3] == (f"member {event['member']} \u2190 member {decision['parent']} "
                                f"(interval {decision['interval']}): {diff}")
    assert exploits


def test_member_filter(quadratic):
    lines = log("--dir", str(quadratic), "--member", "1")

    assert lines and all(re.search(r"member 1 (interval|\u2190)", line) for line in lines)


def test_failures_and_reclaims_read_as_what_happened(tmp_path):
    claim, failed = reclaimed_and_failed(tmp_path / "exp")

    lines = log("--dir", str(tmp_path / "exp"))

    where = f"member {claim.member} interval {claim.decision.interval}"
    assert any(line.endswith(f"reclaim  {where}: lease of pytest-worker dropped by reclaimer: no heartbeat for 1000 s "
                             "(timeout 60 s)") for line in lines)
    assert re.search(rf"  failing +fail +member {failed.member} interval {failed.decision.interval} "
                     r"FAILED: metric 'score' is nan$", lines[-1])


def test_a_retry_reads_as_what_happened(tmp_path):
    """A retry event names no member; `hopt log` printed a KeyError traceback on it."""
    root = tmp_path / "exp"
    store, _ = mid_run(root)
    failing = Worker(store, "failing", trainable=lambda ctx: float("nan"))
    while not store.sync().failed:
        failing.train_and_commit(failing.claim())
    assert store.retry()

    lines = log("--dir", str(root))
    document = json.loads(CliRunner().invoke(cli, ["log", "--dir", str(root), "--json"]).stdout)

    assert re.search(r"  hopt-retry  +retry +failure counts cleared by `hopt retry`", lines[-1]), lines[-1]
    last = document["events"][-1]
    assert (last["kind"], last["member"], last["worker"]) == ("retry", None, "hopt-retry")

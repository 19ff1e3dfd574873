"""The journal read in chunks: the same events whatever the chunk size, a torn last line left unread."""
from __future__ import annotations

import json

from hopt_cli.store import journal as journal_module
from hopt_cli.store.journal import Cursor, Journal, line_hash


def test_replay_in_small_chunks_sees_every_event_once_and_stops_before_a_torn_line(tmp_path, monkeypatch):
    journal = Journal(tmp_path / "journal.jsonl")
    events = [{"type": "claim", "member": i, "note": "x" * (i * 7 % 50)} for i in range(40)]
    lines = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    journal.path.write_bytes(lines + b'{"type": "commit", "mem')
    monkeypatch.setattr(journal_module, "CHUNK", 13)

    seen: list[dict] = []
    end = journal.replay(Cursor(), lambda event, line, valid: seen.append(event))

    assert seen == events and end.offset == len(lines) and end.lines == 40
    middle = Cursor(offset=len(json.dumps(events[0])) + 1, lines=1)
    assert journal.read(middle)[0] == events[1:]


def test_a_reader_without_the_lock_survives_a_torn_line_cut_and_replaced_while_it_reads(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    first = {"type": "claim", "member": 0}
    journal.append(first, Cursor())
    with open(journal.path, "ab") as handle:
        handle.write(b'{"type": "com')  # a crash mid-append
    later = {"type": "commit", "member": 1, "note": "longer than the torn line it follows"}

    def writer_meanwhile(event: dict, line: bytes, valid: bool) -> None:  # holding the lock, between reads
        if event["type"] == "claim":
            journal.repair_tail()
            journal.append(later, Cursor(len(line), 1, line_hash(line), True))

    end = journal.replay(Cursor(), writer_meanwhile)

    assert [{k: v for k, v in e.items() if k not in ("seq", "prev")} for e in journal.read(end)[0]] == [later]

"""state.json: the population at a journal offset, in a form that stays fast at a million intervals.

Plain JSON with two exceptions that keep it small and quick at scale. Lineages copied from one another
share their (immutable) segments, and a segment always follows the same one in every lineage that
holds it (copies take whole prefixes), so the segments form a tree: the snapshot stores each segment
once with the index of the one before it, and a lineage as the index of its last segment. Reading it
back shares them again. Lineage scores are float64 arrays in base64: formatting and parsing a million
floats as text takes seconds, as bytes milliseconds, and the values round-trip exactly.
"""
from __future__ import annotations

import base64
import dataclasses
import re
import sys
from array import array
from pathlib import Path
from typing import Any

from hopt_cli.errors import FilesystemError
from hopt_cli.population import BestEntry, Claimer, Lineage, MemberState, Population, Segment
from hopt_cli.store.fsio import retrying
from hopt_cli.store.journal import Cursor

FORMAT = 6  # 3: segments as a tree, scores as float64 bytes, claim tokens; 4: recent progress; 5: the cursor;
# 6: stop rules and `hopt set` (members' commit numbers, the stop, the settings)
_LISTS = ("members", "pending", "best")
_HEAD = re.compile(rb'\{"format":(\d+),"offset":\d+,"events":(\d+),')  # as write_json_atomic writes it


class _Writer:
    """Encodes lineages, numbering each distinct segment once, after the segment before it."""

    def __init__(self) -> None:
        self.numbers: dict[int, int] = {}
        self.segments: list[tuple[int | None, dict[str, Any]]] = []

    def lineage(self, lineage: Lineage) -> dict[str, Any]:
        return {"scores": _pack(lineage.scores), "last": self._number(lineage.segments)}

    def _number(self, segments: list[Segment]) -> int | None:
        """The number of the last segment, numbering the ones not seen yet (a lineage's new tail)."""
        known = len(segments)
        while known and id(segments[known - 1]) not in self.numbers:
            known -= 1
        number = self.numbers[id(segments[known - 1])] if known else None
        for segment in segments[known:]:
            self.segments.append((number, vars(segment)))
            number = self.numbers[id(segment)] = len(self.segments) - 1
        return number


def encode(population: Population, cursor: Cursor) -> dict[str, Any]:
    """The snapshot document of `population`, the state after the journal's lines up to `cursor`."""
    writer = _Writer()
    data = {f.name: getattr(population, f.name) for f in dataclasses.fields(population) if f.name not in _LISTS}
    data["members"] = [{**vars(m), "lineage": writer.lineage(m.lineage), "claim_holder": _holder(m.claim_holder)}
                       for m in population.members]
    data["pending"] = {str(member): writer.lineage(lineage) for member, lineage in population.pending.items()}
    data["best"] = [{**vars(b), "lineage": writer.lineage(b.lineage)} for b in population.best]
    return {"format": FORMAT, "offset": cursor.offset, "events": population.events, "cursor": cursor.to_dict(),
            "segments": writer.segments, "population": data}


def decode(document: dict[str, Any]) -> tuple[Population, Cursor]:
    """The population and journal cursor a snapshot document holds; ValueError if it is not one."""
    if document.get("format") != FORMAT:
        raise ValueError(f"snapshot format {document.get('format')!r}, not {FORMAT}")
    rows = document["segments"]
    if any(before is not None and not 0 <= before < number for number, (before, _) in enumerate(rows)):
        raise ValueError("a segment does not follow an earlier one")  # which also rules out cycles
    segments = [Segment(**fields) for _, fields in rows]

    def lineage(data: dict[str, Any]) -> Lineage:
        path, number = [], data["last"]
        while number is not None:
            path.append(segments[number])
            number = rows[number][0]
        return Lineage(_unpack(data["scores"]), path[::-1])

    data = dict(document["population"])
    data["members"] = [MemberState(**{**m, "lineage": lineage(m["lineage"]), "claim_holder": _claimer(m)})
                       for m in data["members"]]
    data["pending"] = {int(k): lineage(v) for k, v in data["pending"].items()}
    data["best"] = [BestEntry(**{**b, "lineage": lineage(b["lineage"])}) for b in data["best"]]
    data["progress"] = [(at, done) for at, done in data["progress"]]
    cursor = Cursor(**document["cursor"])
    if cursor.offset != document["offset"]:
        raise ValueError("the cursor and the offset disagree")
    return Population(**data), cursor


def _holder(claimer: Claimer | None) -> dict[str, Any] | None:
    """A claim's holder as state.json has always stored it: a plain object."""
    return None if claimer is None else vars(claimer)


def _claimer(member: dict[str, Any]) -> Claimer | None:
    holder = member.get("claim_holder")
    return None if holder is None else Claimer(**holder)


def events_in(path: Path) -> int:
    """How many journal events the snapshot at `path` reflects (0 if none), from its first bytes only.

    Tells every worker when the snapshot is due, whoever wrote the last one, without parsing it.
    """
    try:
        head = _HEAD.match(retrying(lambda: _head(path), path))
    except (FileNotFoundError, FilesystemError):  # unreadable now: a snapshot is due, which is harmless
        return 0
    return int(head[2]) if head and int(head[1]) == FORMAT else 0


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(100)


def _pack(scores: list[float]) -> str:
    packed = array("d", scores)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _unpack(text: str) -> list[float]:
    packed = array("d", base64.b64decode(text, validate=True))
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()

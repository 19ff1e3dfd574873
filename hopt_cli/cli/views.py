"""The text `hopt` prints for an experiment: the status table, the top table, a setting's value."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hopt_cli.text import shown
from hopt_cli.experiment import Best, Experiment, MemberStatus, Status

SUMMARY_ROWS = 20  # members `hopt status` lists before it summarises the rest (--all lists them all)


def status_table(s: Status, every_member: bool = False) -> str:
    head = f"{s.name}: {s.done}/{s.total} intervals ({100 * s.done / s.total:.0f}%), policy {s.policy}"
    if s.best:
        head += f", best {s.metric} {s.best.score:.6g} (member {s.best.member}, interval {s.best.interval})"
    if s.complete:
        head += ", complete"
    eta = "" if s.complete else f", ETA {duration(s.eta)}"
    silent = f", {len(s.silent_workers)} silent" if s.silent_workers else ""
    timing = (f"elapsed {duration(s.elapsed)}{eta}, workers: {len(s.live_workers)} live{silent}, "
              f"{len(s.stale_workers)} stale")
    lines = [head, timing] + ([f"FAILED: {s.failed}"] if s.failed else [])
    if s.stopped:
        lines.append(f"STOPPED: {s.stopped}; `hopt extend` resumes it")
    if s.changed:
        lines.append("set by `hopt set`: " + " ".join(f"{k}={setting(s.settings[k])}" for k in s.changed))
    names = list(s.members[0].hparams) if s.members and s.members[0].hparams else []
    listed = s.members if every_member or len(s.members) <= SUMMARY_ROWS else _best_members(s)
    devices = any(m.device is not None for m in listed)  # a column only where the trainable says
    rows = [["member", "interval", s.metric, f"robust({s.robust_window})", *names, "sigma",
             *(["trained on"] if devices else []), "lease (worker host:pid heartbeat)"]]
    for m in listed:
        state = "" if m.lease is None else "DEAD " if m.lease.gone else "STALE " if m.lease.stale else \
            "SILENT " if m.lease.silent else ""
        gpu = f" gpu {m.lease.device}" if m.lease and m.lease.device is not None else ""
        lease = "free" if m.lease is None else (f"{state}{m.lease.worker} "
                                                f"{m.lease.host}:{m.lease.pid}{gpu} {duration(m.lease.age)} ago")
        rows.append([f"{m.member}{'*' if m.explorer else ''}", shown(m.interval), shown(m.score), shown(m.robust),
                     *(shown(m.hparams.get(n)) for n in names), f"{m.sigma:.3g}",
                     *([shown(m.device)] if devices else []), lease])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if len(listed) < len(s.members):
        lines.append(_rest_summary(s, {m.member for m in listed}))
    if any(m.explorer for m in listed):
        lines.append("* explorer (never copies, never changes its hyperparameters)")
    return "\n".join(lines)


def _best_members(s: Status) -> list[MemberStatus]:
    """The SUMMARY_ROWS best-scoring members (those without a score last), in member order."""
    sign = -1 if s.mode == "max" else 1
    ranked = sorted(s.members, key=lambda m: (m.score is None, sign * (m.score or 0.0), m.member))
    return sorted(ranked[:SUMMARY_ROWS], key=lambda m: m.member)


def _rest_summary(s: Status, listed: set[int]) -> str:
    rest = [m for m in s.members if m.member not in listed]
    intervals = sorted(m.interval for m in rest if m.interval is not None)
    at = f"at intervals {intervals[0]}-{intervals[-1]}" if intervals else "none committed yet"
    training = sum(m.lease is not None for m in rest)
    failing = sum(m.failures > 0 for m in rest)
    return (f"... and {len(rest)} more members ({at}, {training} training, {failing} with failures): "
            "`hopt status --all` lists every one")



def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d{h:02d}h" if days else f"{hours}h{m:02d}m" if hours else f"{minutes}m{s:02d}s"


def top_table(experiment: Experiment, entries: list[Best], out: Path | None) -> str:
    lines = [f"rank  {experiment.recipe.objective.metric:>10}  member  interval  exploits"]
    for rank, e in enumerate(entries, 1):
        exploits = sum(step.copied_from is not None for step in e.schedule)
        lines.append(f"{rank:4d}  {e.score:10.5g}  {e.member:6d}  {e.interval:8d}  {exploits:8d}")
    lines.append(f"exported to {out}/rank-1 ... rank-{len(entries)}" if out else "export them with --out DIR")
    return "\n".join(lines)


def setting(value: Any) -> str:
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

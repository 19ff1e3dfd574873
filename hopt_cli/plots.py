"""`hopt plot`: PNG figures of an experiment's history (matplotlib, the optional extra `plot`).

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so
plotting from a notebook leaves its backend alone. matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hopt_cli.errors import HoptError
from hopt_cli.timeline import TrainedInterval
from hopt_cli.store.fsio import write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from hopt_cli.experiment import Best, Experiment
    from hopt_cli.space import Param

DPI = 100
BEST = "black"
EXPLOIT = "#d62728"  # tab10's red, which no member line uses (see _colors)
MEMBER_LINE = {"lw": 1.2, "alpha": 0.85}  # how member lines are drawn, and so how the legend shows them
_RED = {"tab10": {3}, "tab20": {6, 7}}  # the palettes' reds, kept for exploits
OFF_SCALE = 3.0  # scores.png leaves off scores this many population ranges beyond it (see _score_limits)
LEVEL_GAP = 1.2  # step sizes closer than this factor share one labelled tick on sigma.png
MAX_LEVELS = 12  # labelled step sizes at most on sigma.png


def plot(experiment: Experiment, out: str | Path) -> list[Path]:
    """Draw scores.png, schedule.png, lineage.png and sigma.png into `out`; returns their paths.

    Each file is written whole or not at all (a full disk leaves the previous version, or none)."""
    drawn = {name: _png(figure) for name, figure in figures(experiment).items()}
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in drawn.items():
            write_atomic(out / name, data, sync_dir=False)
    except OSError as err:
        raise HoptError(f"cannot write figures to {out}: {err.strerror}; choose an --out you can write to, "
                        "with room for them") from None
    return [out / name for name in drawn]


def figures(experiment: Experiment) -> dict[str, Figure]:
    """The four figures by file name, drawn from the journal (in a notebook: display them directly)."""
    _matplotlib()
    commits = experiment.history()
    if not commits:
        raise HoptError(f"{experiment.store.paths.root}: nothing to plot yet, no interval has been committed")
    best = experiment.best()
    failed = [(e.member, e.interval) for e in experiment.events() if e.kind == "fail"]
    return {"scores.png": _scores(experiment, commits, best, failed),
            "schedule.png": _schedule(experiment, commits, best),
            "lineage.png": _lineage(experiment, commits, best, failed), "sigma.png": _sigma(experiment, commits, best)}


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401  (only checks it is installed)
    except ImportError:
        raise HoptError("hopt plot needs matplotlib: pip install 'matplotlib>=3.6' (or, in hopt's folder, "
                        "pip install -e '.[plot]')") from None


def _png(figure: Figure) -> bytes:
    """A palette PNG: a few times smaller than matplotlib's RGBA, and as sharp for line plots."""
    from PIL import Image  # pillow is a dependency of matplotlib

    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    packed = BytesIO()
    image.save(packed, format="png", optimize=True)
    return packed.getvalue()


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colors(n: int) -> list[Any]:
    """One colour per member, never the exploit red: distinct for up to 18 members, a gradient beyond."""
    from matplotlib import colormaps

    for name, size in (("tab10", 10), ("tab20", 20)):
        palette = [colormaps[name](i) for i in range(size) if i not in _RED[name]]
        if n <= len(palette):
            return palette[:n]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def _integer_intervals(ax: Axes) -> None:
    """Ticks on whole intervals only: there is no interval 2.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _title(experiment: Experiment, what: str) -> str:
    r, population = experiment.recipe, experiment.population()
    return (f"{r.name}: {what}  ({population.size} members, {population.intervals} intervals, "
            f"policy {r.policy.name})")


def _member_legend(ax: Axes, n: int, colors: list[Any], extra: list[Any]) -> None:
    """`extra` handles and, for up to 10 members, one per member, outside the axes on the right."""
    from matplotlib.lines import Line2D

    if n <= 10:
        handles = [Line2D([], [], color=colors[m], **MEMBER_LINE, label=f"member {m}") for m in range(n)]
    else:
        handles = [Line2D([], [], color="gray", **MEMBER_LINE, label=f"members 0-{n - 1} (one colour each)")]
    ax.legend(handles=extra + handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _scores(experiment: Experiment, commits: list[TrainedInterval], best: Best,
            failed: list[tuple[int, int]]) -> Figure:
    """Score against interval for every member; an exploit is a dashed jump from the copied checkpoint, a
    failed interval a cross along the bottom, and a score far off the population's range (a diverged
    member) a triangle on the edge it lies beyond."""
    from matplotlib.lines import Line2D

    n = experiment.population().size
    colors = _colors(n)
    figure = _figure(11, 6)
    ax = figure.subplots()
    at = {c.checkpoint: c for c in commits}
    runs: dict[int, list[TrainedInterval]] = defaultdict(list)
    for c in commits:
        if c.action != "continue":
            _draw_run(ax, runs.pop(c.member, []), colors[c.member])
        runs[c.member].append(c)
        parent = at.get(c.parent_checkpoint) if c.action == "exploit" else None
        if parent is not None:
            ax.plot([parent.interval, c.interval], [parent.score, c.score], ls="--", lw=1, color=colors[c.member])
            ax.plot(c.interval, c.score, marker="o", ms=5, mfc="white", mec=EXPLOIT, mew=1.2, ls="none")
    for member, run in runs.items():
        _draw_run(ax, run, colors[member])
    ax.plot([s.interval for s in best.schedule], [s.score for s in best.schedule], color=BEST, lw=2.5, alpha=0.8)
    extra = [Line2D([], [], color=BEST, lw=2.5, label=f"best lineage (member {best.member})"),
             Line2D([], [], color="gray", ls="--", marker="o", mfc="white", mec=EXPLOIT,
                    label="exploit: jump from the copied checkpoint")]
    limits = _score_limits([c.score for c in commits], [c.interval for c in commits])
    if limits is not None:
        ax.set_ylim(*limits)
        extra.append(_off_scale(ax, commits, limits, colors))
    if failed:
        extra.append(_failures(ax, failed, colors))
    _member_legend(ax, n, colors, extra)
    ax.set(xlabel="interval", ylabel=experiment.recipe.objective.metric,
           title=_title(experiment, f"{experiment.recipe.objective.metric} per interval"))
    _integer_intervals(ax)
    ax.grid(alpha=0.3)
    return figure


def _score_limits(scores: list[float], intervals: list[int]) -> tuple[float, float] | None:
    """The y range that shows the population, or None when every score fits it.

    A score is left off when it lies farther from the range of the intervals' median scores than
    OFF_SCALE times that range's width (plus a typical interval's interquartile spread): one diverged
    member then cannot squash every other curve, while the population's own progress, however large,
    and a member merely lagging behind stay in view."""
    import numpy as np

    by_interval: dict[int, list[float]] = defaultdict(list)
    for interval, score in zip(intervals, scores):
        by_interval[interval].append(score)
    medians = [float(np.median(v)) for v in by_interval.values()]
    spread = float(np.median([np.subtract(*np.percentile(v, [75, 25])) for v in by_interval.values()]))
    margin = OFF_SCALE * (max(medians) - min(medians) + spread)
    kept = [s for s in scores if min(medians) - margin <= s <= max(medians) + margin]
    if margin <= 0 or len(kept) == len(scores):
        return None
    pad = 0.05 * (max(kept) - min(kept)) or 0.05 * abs(max(kept)) or 1.0
    return min(kept) - pad, max(kept) + pad


def _off_scale(ax: Axes, commits: list[TrainedInterval], limits: tuple[float, float], colors: list[Any]) -> Any:
    """A triangle on the bottom or top edge at each interval whose score lies beyond `limits`; its legend handle."""
    from matplotlib.lines import Line2D

    low, high = limits
    for c in commits:
        if not low <= c.score <= high:
            below = c.score < low
            ax.plot(c.interval, 0.0 if below else 1.0, marker="v" if below else "^", ms=7, color=colors[c.member],
                    ls="none", transform=ax.get_xaxis_transform(), clip_on=False, zorder=4, gid="off-scale")
    return Line2D([], [], color="gray", marker="v", ls="none", label="score off the scale (diverged)")


def _failures(ax: Axes, failed: list[tuple[int, int]], colors: list[Any]) -> Any:
    """A cross along the bottom of the axes at each failed interval, in its member's colour (several failures
    at one interval stack up); its legend handle."""
    from matplotlib.lines import Line2D

    seen: dict[int, int] = defaultdict(int)
    for member, interval in failed:
        ax.plot(interval, 0.04 + 0.04 * seen[interval], marker="x", ms=7, mew=2, color=colors[member], ls="none",
                transform=ax.get_xaxis_transform(), zorder=4, gid="failed")
        seen[interval] += 1
    return Line2D([], [], color="gray", marker="x", mew=2, ls="none", label="failed interval (no score)")


def _log_y(ax: Axes) -> None:
    """A log y axis labelled with plain numbers (0.02, not 2x10^-2), minor ticks as far as they fit.

    Call after plotting, so the limits are known.
    """
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    decades = math.log10(high / low)
    shown = set(range(1, 10)) if decades < 1 else {2, 5} if decades < 3 else set()

    def minor(value: float, _: int) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return f"{value:g}" if mantissa in shown else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="both", labelsize=8)


def _draw_run(ax: Axes, run: list[TrainedInterval], color: Any) -> None:
    if run:
        ax.plot([c.interval for c in run], [c.score for c in run], color=color, **MEMBER_LINE)


def _schedule(experiment: Experiment, commits: list[TrainedInterval], best: Best) -> Figure:
    """Each hyperparameter of the best lineage over the population's spread, one panel per parameter."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    params = experiment.recipe.space.params
    cols = 1 if len(params) <= 3 else 2
    rows = math.ceil(len(params) / cols)
    figure = _figure(11 if cols == 2 else 10, 1.6 + 2.4 * rows)
    axes = figure.subplots(rows, cols, sharex=True, squeeze=False).ravel()
    for ax, param in zip(axes, params):
        _schedule_panel(ax, param, commits, best)
    for ax in axes[len(params):]:
        ax.set_visible(False)
    for ax in axes[len(params) - cols:len(params)]:
        ax.set_xlabel("interval")
        ax.xaxis.set_tick_params(labelbottom=True)
    figure.legend(handles=[Line2D([], [], color=BEST, lw=2, label=f"best lineage (member {best.member})"),
                           Line2D([], [], color=EXPLOIT, marker="o", ls="none", label="exploit along it"),
                           Line2D([], [], color="gray", lw=1, label="population median"),
                           Patch(color="gray", alpha=0.25, label="population min-max")],
                  loc="outside lower center", ncols=4, frameon=False, fontsize=9)
    figure.suptitle(_title(experiment, "hyperparameter schedule of the best lineage"))
    return figure


def _spread(points: Iterable[tuple[int, float]]) -> tuple[list[int], list[list[float]]]:
    """The intervals that have values, and for each the population's values sorted (min first, max last)."""
    by_interval: dict[int, list[float]] = defaultdict(list)
    for interval, value in points:
        by_interval[interval].append(value)
    xs = sorted(by_interval)
    return xs, [sorted(by_interval[x]) for x in xs]


def _schedule_panel(ax: Axes, param: Param, commits: list[TrainedInterval], best: Best) -> None:
    value = (lambda v: param.values.index(v)) if param.is_choice else float
    xs, spread = _spread((c.interval, value(c.hparams[param.name])) for c in commits)
    ax.fill_between(xs, [s[0] for s in spread], [s[-1] for s in spread], color="gray", alpha=0.25, lw=0)
    ax.plot(xs, [s[len(s) // 2] for s in spread], color="gray", lw=1)
    steps = best.schedule
    ax.step([s.interval for s in steps], [value(s.hparams[param.name]) for s in steps], where="post", color=BEST, lw=2)
    jumps = [s for s in steps if s.copied_from is not None]
    ax.plot([s.interval for s in jumps], [value(s.hparams[param.name]) for s in jumps], "o", color=EXPLOIT, ms=4)
    if param.is_choice:
        ax.set_yticks(range(len(param.values)), [str(v) for v in param.values])
    elif param.log:
        _log_y(ax)
    ax.set_ylabel(f"{param.name}{' (log)' if param.log else ''}")
    _integer_intervals(ax)
    ax.grid(alpha=0.3)


def _lineage(experiment: Experiment, commits: list[TrainedInterval], best: Best,
             failed: list[tuple[int, int]]) -> Figure:
    """Members against intervals: a dot per committed interval coloured by score (over the population's
    range: a diverged member takes the end colour), an arrow per copy, a cross per failed interval."""
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    n = experiment.population().size
    maximize = experiment.recipe.objective.maximize
    figure = _figure(11, max(4.0, 1.8 + 0.32 * n))
    ax = figure.subplots()
    at = {c.checkpoint: c for c in commits}
    for c in commits:
        parent = at.get(c.parent_checkpoint)
        if parent is None:
            continue
        if c.action == "exploit":
            ax.annotate("", (c.interval, c.member), (parent.interval, parent.member),
                        arrowprops={"arrowstyle": "-|>", "color": EXPLOIT, "lw": 0.9, "alpha": 0.7,
                                    "shrinkA": 2, "shrinkB": 3})
        else:
            ax.plot([parent.interval, c.interval], [c.member, c.member], color="lightgray", lw=1, zorder=1)
    ax.plot([s.interval for s in best.schedule], [s.member for s in best.schedule], color=BEST, lw=2.5, alpha=0.6,
            zorder=2)
    scores = [c.score for c in commits]
    low, high = _score_limits(scores, [c.interval for c in commits]) or (min(scores), max(scores))
    dots = ax.scatter([c.interval for c in commits], [c.member for c in commits], c=scores, s=14, zorder=3,
                      cmap="viridis" if maximize else "viridis_r", norm=Normalize(low, high, clip=True))
    if failed:
        ax.plot([i for _, i in failed], [m for m, _ in failed], "x", ms=7, mew=2, color=BEST, zorder=4, gid="failed")
    figure.colorbar(dots, ax=ax, label=f"{experiment.recipe.objective.metric} ({'higher' if maximize else 'lower'} is better)",
                    pad=0.01)
    explorers = {c.member for c in commits if c.explorer}
    ax.set_yticks(range(n), [f"{m} explorer" if m in explorers else str(m) for m in range(n)],
                  fontsize=8 if n > 16 else 9)
    ax.set_ylim(n - 0.5, -0.5)
    handles = [Line2D([], [], color=EXPLOIT, marker=">", label="copied a better member's checkpoint"),
               Line2D([], [], color=BEST, lw=2.5, alpha=0.6, label=f"best lineage (member {best.member})")]
    if failed:
        handles.append(Line2D([], [], color=BEST, marker="x", mew=2, ls="none", label="failed interval"))
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    ax.set(xlabel="interval", ylabel="member", title=_title(experiment, "who copied whom, and when"))
    _integer_intervals(ax)
    ax.grid(axis="x", alpha=0.3)
    return figure


def _sigma(experiment: Experiment, commits: list[TrainedInterval], best: Best) -> Figure:
    """Each member's step size (in unit-cube coordinates) against interval, the best lineage's in bold."""
    from matplotlib.lines import Line2D

    n = experiment.population().size
    colors = _colors(n)
    figure = _figure(11, 5)
    ax = figure.subplots()
    ax.set(xlabel="interval", ylabel="step size \u03c3 (unit cube)",
           title=_title(experiment, "step size per member"))
    if not any(c.sigma > 0 for c in commits):
        ax.text(0.5, 0.5, f"policy {experiment.recipe.policy.name} has no step size", ha="center", va="center",
                transform=ax.transAxes, fontsize=12, color="gray")
        return figure
    sigma = {(c.member, c.interval): c.sigma for c in commits}
    explorers = {c.member for c in commits if c.explorer}
    for member in range(n):
        xs = sorted(i for m, i in sigma if m == member)
        ax.step(xs, [sigma[member, x] for x in xs], where="post", color=colors[member], **MEMBER_LINE,
                ls=":" if member in explorers else "-")
    xs, spread = _spread((interval, value) for (_, interval), value in sigma.items())
    ax.step(xs, [s[len(s) // 2] for s in spread], where="post", color="gray", lw=2.5, ls="--")
    ax.step([s.interval for s in best.schedule], [sigma[s.member, s.interval] for s in best.schedule], where="post",
            color=BEST, lw=2.5)
    _level_ticks(ax, [value for value in sigma.values() if value > 0])
    _integer_intervals(ax)
    ax.grid(alpha=0.3)
    extra = [Line2D([], [], color=BEST, lw=2.5, label=f"best lineage (member {best.member})"),
             Line2D([], [], color="gray", lw=2.5, ls="--", label="population median")]
    if explorers:
        extra.append(Line2D([], [], color="gray", ls=":", label="explorer (keeps its step size)"))
    _member_legend(ax, n, colors, extra)
    return figure


def _level_ticks(ax: Axes, levels: list[float]) -> None:
    """A log y axis with a labelled tick at each step size that occurs, and no other.

    ROMUL halves or doubles the step size, so its levels are evenly spaced on a log axis; a level within
    LEVEL_GAP of a lower labelled one goes unlabelled (the lowest and the highest are labelled), and
    more than MAX_LEVELS are thinned out evenly."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    shown: list[float] = []
    for level in sorted(set(levels)):
        if not shown or level >= shown[-1] * LEVEL_GAP:
            shown.append(level)
        elif level == max(levels) and len(shown) > 1:
            shown[-1] = level
    if len(shown) > MAX_LEVELS:  # evenly spread, the lowest and the highest among them
        shown = [shown[round(i * (len(shown) - 1) / (MAX_LEVELS - 1))] for i in range(MAX_LEVELS)]
    ax.set_yscale("log")
    ax.set_ylim(min(levels) / 1.3, max(levels) * 1.3)
    ax.yaxis.set_major_locator(FixedLocator(shown))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="y", labelsize=8)

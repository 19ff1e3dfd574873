"""`hopt plot`: four valid PNG figures of the expected size, and one clear line when matplotlib is missing;
a diverged member, a failed interval and many step sizes drawn so that they can be read."""
from __future__ import annotations

import json
import struct
import sys

import pytest
from click.testing import CliRunner
from matplotlib.colors import to_hex

from hopt_cli import cli as cli_module
from hopt_cli.cli import cli
from hopt_cli.experiment import Experiment
from hopt_cli.plots import EXPLOIT, figures
from hopt_cli.recipe import Recipe
from hopt_cli.store import Store
from hopt_cli.worker import Worker
from tests.conftest import toy_recipe
from tests.hopt_cli.conftest import hopt_onto_a_full_disk
from workers.toys import pbt_quadratic

DIVERGES = (2, 2)  # (member, interval) where the toy blows up its checkpoint: the score drops to about -1e6
FAILS = (1, 3)  # and where its first attempt returns NaN
FAILED: set[tuple[int, int]] = set()  # the in-process worker's attempts that failed so far


def troubled(ctx):
    """T1, except that member 2 diverges at interval 2 (so does whoever copies it) and member 1's interval 3
    fails once."""
    if (ctx.member, ctx.interval) == FAILS and FAILS not in FAILED:
        FAILED.add(FAILS)
        return float("nan")
    result = pbt_quadratic(ctx)
    if (ctx.member, ctx.interval) != DIVERGES:
        return result
    state = ctx.out / "state.json"
    theta = [1000 * t for t in json.loads(state.read_text())["theta"]]
    state.write_text(json.dumps({"theta": theta}))
    return 1.2 - sum(t * t for t in theta)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory):
    """A real experiment, 5 members x 8 intervals, with a diverged member and a failed interval."""
    store = Store.create(tmp_path_factory.mktemp("diverged") / "exp", Recipe.from_dict(toy_recipe(population=5,
                                                                                                  intervals=8)))
    worker = Worker(store, "pytest-worker", trainable=troubled)
    while (claim := worker.claim()) is not None:
        worker.train_and_commit(claim)
    return Experiment(store.paths.root)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_draws_four_figures(ellipsoid, tmp_path):
    result = CliRunner().invoke(cli, ["plot", "--dir", str(ellipsoid), "--out", str(tmp_path / "plots")])

    assert result.exit_code == 0, result.output
    names = ["scores.png", "schedule.png", "lineage.png", "sigma.png"]
    assert result.stdout.split() == [str(tmp_path / "plots" / n) for n in names]
    # 100 dpi: 11 x 6 in, 8 hyperparameters in 4 rows x 2 columns, 6 members, 11 x 5 in
    expected = {"scores.png": (1100, 600), "schedule.png": (1100, 1120), "lineage.png": (1100, 400),
                "sigma.png": (1100, 500)}
    for name, size in expected.items():
        path = tmp_path / "plots" / name
        assert png_size(path) == size
        assert 10_000 < path.stat().st_size < 200_000


def test_plot_without_matplotlib_says_how_to_install_it(quadratic, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(sys, "argv", ["hopt", "plot", "--dir", str(quadratic), "--out", str(tmp_path / "plots")])

    with pytest.raises(SystemExit) as exit:
        cli_module.main()

    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        "hopt: error: hopt plot needs matplotlib: pip install 'matplotlib>=3.6' (or, in hopt's folder, "
        "pip install -e '.[plot]')\n")
    assert not (tmp_path / "plots").exists()


def test_intervals_are_whole_numbers_on_every_axis(quadratic):
    """8 intervals drew ticks at 2.5 and 7.5; there is no half interval."""
    for name, figure in figures(Experiment(quadratic)).items():
        for ax in figure.axes:
            if ax.get_visible() and ax.get_xlabel() == "interval":
                ticks = ax.get_xticks()
                assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), (name, ticks)


def test_member_lines_look_as_the_legend_shows_them_and_never_in_the_exploit_red(quadratic):
    drawn = figures(Experiment(quadratic))
    for name in ("scores.png", "sigma.png"):
        ax = drawn[name].axes[0]
        handles = [h for h in ax.get_legend().legend_handles if h.get_label().startswith("member ")]
        assert len(handles) == 5
        for handle in handles:
            assert to_hex(handle.get_color()) != EXPLOIT, f"{name}: {handle.get_label()} is drawn in the exploit red"
            same = [line for line in ax.lines if to_hex(line.get_color()) == to_hex(handle.get_color())
                    and line.get_linestyle() in ("-", ":")]  # exploit jumps and markers have their own entry
            assert same and all((line.get_linewidth(), line.get_alpha()) == (handle.get_linewidth(), handle.get_alpha())
                                for line in same), f"{name}: {handle.get_label()} looks unlike its lines"


def test_plot_on_a_full_disk_is_one_line_and_leaves_no_partial_png(quadratic, tmp_path):
    result = hopt_onto_a_full_disk(tmp_path, "plot", quadratic, "plots")
    disk = tmp_path / "disk"

    assert result.stderr == (f"hopt: error: cannot write figures to {disk}/plots: No space left on device; choose "
                             "an --out you can write to, with room for them\n")
    assert result.stdout == "status=2\n"  # and `ls -A` printed nothing: no PNG, whole or partial, no temp file


def test_failed_intervals_are_marked_and_a_diverged_member_leaves_the_others_readable(diverged):
    """A failed interval was not drawn at all, and one diverged member squashed every other curve into a line."""
    commits = diverged.history()
    far = [c for c in commits if c.score < -1000]
    assert far and (DIVERGES[1], DIVERGES[0]) in {(c.interval, c.member) for c in far}
    drawn = figures(diverged)
    scores, lineage = drawn["scores.png"].axes[0], drawn["lineage.png"].axes[0]

    failed = [line for line in scores.lines if line.get_gid() == "failed"]
    assert [(line.get_xdata()[0], to_hex(line.get_color())) for line in failed] == \
        [(FAILS[1], to_hex(next(h.get_color() for h in scores.get_legend().legend_handles
                                if h.get_label() == f"member {FAILS[0]}")))]
    assert [(x, y) for line in lineage.lines if line.get_gid() == "failed" for x, y in line.get_xydata()] == \
        [(FAILS[1], FAILS[0])]

    low, high = scores.get_ylim()
    assert -2 < low and high < 2, "the y axis spans the diverged scores"
    assert all(low <= c.score <= high for c in commits if c.score >= -1000)
    off = sorted(line.get_xdata()[0] for line in scores.lines if line.get_gid() == "off-scale")
    assert off == sorted(c.interval for c in far)
    norm = lineage.collections[0].norm
    assert (norm.vmin, norm.vmax) == (low, high)


def test_every_step_size_level_is_labelled_and_no_other(diverged, ellipsoid):
    """sigma.png labelled minor ticks between levels (bunched up) and left the lowest level unlabelled."""
    for experiment in (diverged, Experiment(ellipsoid)):
        figure = figures(experiment)["sigma.png"]
        figure.draw_without_rendering()
        ax = figure.axes[0]
        low, high = ax.get_ylim()
        labels = [t for t in ax.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
        levels = {f"{c.sigma:g}" for c in experiment.history()}

        assert {t.get_text() for t in labels} == levels and len(levels) >= 3
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda box: box.y0)
        assert all(below.y1 <= above.y0 for below, above in zip(boxes, boxes[1:])), "labels overlap"

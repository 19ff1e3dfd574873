"""`hopt plot`: four valid PNG figures of the expected size, and one clear line when matplotlib is missing."""
from __future__ import annotations

import struct
import sys

import pytest
from click.testing import CliRunner
from matplotlib.colors import to_hex

from hopt_cli import cli as cli_module
from hopt_cli.cli import cli
from hopt_cli.experiment import Experiment
from hopt_cli.plots import EXPLOIT, figures
from tests.hopt_cli.conftest import hopt_onto_a_full_disk


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
    assert capsys.readouterr().err == "hopt: error: hopt plot needs matplotlib: pip install 'hopt[plot]'\n"
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

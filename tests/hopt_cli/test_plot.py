"""`hopt plot`: four valid PNG figures of the expected size, and one clear line when matplotlib is missing."""
from __future__ import annotations

import struct
import sys

import pytest
from click.testing import CliRunner

from hopt_cli import cli as cli_module
from hopt_cli.cli import cli


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

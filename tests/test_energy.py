"""Voltage curves: from a tolerable BER to the lowest safe voltage and the energy saved."""

import math

import pytest

from mcel import MCELError
from mcel.energy import VoltageCurve, read_voltage_curve


def test_interpolates_in_log_ber_and_saves_v_squared(tmp_path):
    f = tmp_path / "sram.csv"
    # comments, then a header, then rows in any order
    f.write_text("# chip A, 25 C\nvoltage,ber\n0.9,0\n0.6,1e-2\n# tail\n0.7,1e-4\n0.8,1e-6\n")
    c = read_voltage_curve(f)
    assert c.voltages == (0.6, 0.7, 0.8, 0.9) and c.nominal == 0.9
    assert c.lowest_safe_voltage(1e-4) == pytest.approx(0.7)  # a measured point
    assert c.lowest_safe_voltage(1e-3) == pytest.approx(0.65)  # halfway in log10
    assert c.lowest_safe_voltage(1e-5) == pytest.approx(0.75)
    assert c.lowest_safe_voltage(0.05) == 0.6  # safe even at the lowest voltage measured
    # between 1e-6 at 0.8 V and "0" (1e-12) at 0.9 V: 1e-9 lies halfway
    assert c.lowest_safe_voltage(1e-9) == pytest.approx(0.85)
    assert c.lowest_safe_voltage(0.0) == pytest.approx(0.9)
    assert c.energy_saving(1e-3) == pytest.approx(1 - (0.65 / 0.9) ** 2)
    assert c.energy_saving(0.0) == pytest.approx(0.0)
    # more tolerance never needs more voltage
    bers = [10 ** -k for k in range(1, 13)]
    vs = [c.lowest_safe_voltage(b) for b in bers]
    assert vs == sorted(vs) and all(math.isfinite(v) for v in vs)


@pytest.mark.parametrize("text, match", [
    ("0.9,0\n", "at least two"),
    ("0.9,0\n0.8,0.5\n0.7,0.1\n", "must not rise"),
    ("0.9,0\n0.9,0.1\n", "each voltage once"),
    ("0.9,0\n0.8,2\n", "in \\[0, 1\\]"),
    ("0.9,0\n-0.8,0.1\n", "> 0"),
    ("voltage,ber\n0.9,0\n0.8,high\n", "line 3: expected two numbers"),
    ("0.9\n0.8,0.1\n", "line 1: expected two numbers"),
])
def test_bad_curves_are_one_line(tmp_path, text, match):
    f = tmp_path / "c.csv"
    f.write_text(text)
    with pytest.raises(MCELError, match=match):
        read_voltage_curve(f)


def test_missing_file_is_one_line(tmp_path):
    # the wording every reader of a user's file shares (mcel.io.read_text)
    with pytest.raises(MCELError, match="^voltage curve .*nope.csv does not exist$"):
        read_voltage_curve(tmp_path / "nope.csv")
    with pytest.raises(MCELError):
        VoltageCurve((0.5,), (0.1,))

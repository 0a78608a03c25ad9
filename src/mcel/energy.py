"""What tolerance buys: from a tolerable bit error rate to a supply voltage and energy.

A memory's voltage-to-BER curve (measured on the chip, or from its datasheet) maps the
largest BER a model tolerates to the lowest supply voltage at which the memory's BER
stays at or below it. Dynamic energy per access scales with V^2, so the saving against
the nominal voltage is ``1 - (V / V_nominal)^2``.

The curve is a CSV file of ``voltage,ber`` rows (a header line and ``#`` comment lines
are allowed). BER falls roughly exponentially as the voltage rises, so between two
measured points the curve is interpolated linearly in ``log10(BER)``; a BER of exactly 0
stands for "below 1e-12".
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from mcel.errors import MCELError

BER_FLOOR = 1e-12  # a measured 0 means "below what was measured"; log needs a number


@dataclass(frozen=True)
class VoltageCurve:
    """Measured (voltage, BER) points, sorted by voltage; BER never rises with voltage."""

    voltages: tuple[float, ...]
    bers: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.voltages) < 2 or len(self.voltages) != len(self.bers):
            raise MCELError("a voltage curve needs at least two (voltage, ber) points")
        if any(not (math.isfinite(v) and v > 0) for v in self.voltages):
            raise MCELError("voltages must be finite numbers > 0")
        if any(not 0 <= b <= 1 for b in self.bers):
            raise MCELError("bit error rates of a voltage curve must lie in [0, 1]")
        if list(self.voltages) != sorted(set(self.voltages)):
            raise MCELError("each voltage once, in increasing order")
        if any(b2 > b1 for b1, b2 in zip(self.bers, self.bers[1:])):
            raise MCELError("the BER must not rise with the voltage; check the curve's "
                            "columns (voltage first, then ber)")

    @property
    def nominal(self) -> float:
        """The highest voltage of the curve: the memory's nominal supply."""
        return self.voltages[-1]

    def lowest_safe_voltage(self, ber: float) -> float:
        """The lowest voltage whose BER is at or below ``ber`` (interpolated in log BER);
        the curve's lowest voltage when even that is safe, its nominal voltage when only
        that is."""
        lg = [math.log10(max(b, BER_FLOOR)) for b in self.bers]
        target = math.log10(max(ber, BER_FLOOR))
        if target >= lg[0]:
            return self.voltages[0]
        for i in range(1, len(lg)):
            if lg[i] <= target:  # crossing between point i-1 (above) and i (at or below)
                f = (lg[i - 1] - target) / (lg[i - 1] - lg[i])
                return self.voltages[i - 1] + f * (self.voltages[i] - self.voltages[i - 1])
        return self.nominal

    def energy_saving(self, ber: float) -> float:
        """Dynamic energy saved at the lowest safe voltage, as a fraction of nominal."""
        return 1.0 - (self.lowest_safe_voltage(ber) / self.nominal) ** 2


def read_voltage_curve(path: str | Path) -> VoltageCurve:
    """A `VoltageCurve` from a ``voltage,ber`` CSV file, or one MCELError line."""
    from mcel.io import read_text

    path = Path(path)
    text = read_text(path, "voltage curve")
    points, seen = [], 0  # seen: rows that are neither blank nor comments
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        seen += 1
        try:
            v, b = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            if seen == 1 and len(row) >= 2:
                continue  # a header line, after any comments
            raise MCELError(f"{path}, line {n}: expected two numbers, voltage and ber, "
                            f"got {','.join(row)!r}") from None
        points.append((v, b))
    points.sort()
    try:
        return VoltageCurve(tuple(p[0] for p in points), tuple(p[1] for p in points))
    except MCELError as e:
        raise MCELError(f"{path}: {e}") from None


__all__ = ["VoltageCurve", "read_voltage_curve", "BER_FLOOR"]

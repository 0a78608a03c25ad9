"""The report's numbers for other tools: ``summary.json`` and ``summary.csv`` beside
``report.md``, one row per (group, method, BER), BER 0 being the clean accuracy.

Accuracies, differences and tolerable BERs are fractions (as in every JSON mcel writes);
``delta`` is the method minus the report's baseline (CE unless ``--baseline`` names
another), paired by training seed as in the tables; intervals are 95%, across seeds
where there are several (``across_seeds``), else the one run's over trials.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from mcel.report.stats import Cell, Group, Line, clean_cell, paired_delta

FIELDS = ("dataset", "model", "quant", "fmt", "error_model", "method", "seeds", "ber", "acc",
          "acc_low", "acc_high", "across_seeds", "baseline", "delta", "delta_low",
          "delta_high", "tolerable_ber", "tolerable_low", "tolerable_high")


def summary_rows(groups: list[Group], baseline: str) -> list[dict[str, Any]]:
    """Every number of the report's tables as one flat row per (group, method, BER)."""
    rows = []
    for g in groups:
        base = g.line(baseline)
        for ln in g.lines:
            for ber in [0.0] + [b for b in g.bers if b > 0]:
                cell = _at(ln, ber)
                if cell is None:
                    continue
                other = _at(base, ber) if base is not None and base is not ln else None
                d = paired_delta(cell, other) if other is not None else None
                tol = ln.tolerable
                rows.append({
                    "dataset": g.dataset, "model": g.model, "quant": g.quant, "fmt": g.fmt,
                    "error_model": g.error_model, "method": ln.label,
                    "seeds": " ".join(map(str, ln.seeds)), "ber": ber, "acc": cell.mean,
                    "acc_low": cell.low, "acc_high": cell.high,
                    "across_seeds": cell.across_seeds, "baseline": baseline,
                    "delta": None if d is None else d.mean,
                    "delta_low": None if d is None else d.low,
                    "delta_high": None if d is None else d.high,
                    "tolerable_ber": None if tol is None else tol.mean,
                    "tolerable_low": None if tol is None else tol.low,
                    "tolerable_high": None if tol is None else tol.high})
    return rows


def _at(line: Line | None, ber: float) -> Cell | None:
    if line is None:
        return None
    return clean_cell(line) if ber == 0 else line.curve.get(ber)


def write_summary(out_dir: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """``summary.json`` (with the units) and ``summary.csv`` (empty cells where a value
    does not apply) in ``out_dir``."""
    from mcel.io import atomic_write_bytes

    js, sheet = out_dir / "summary.json", out_dir / "summary.csv"
    atomic_write_bytes(js, json.dumps({"units": "accuracies, differences and BERs are "
                                                "fractions", "rows": rows}, indent=1).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    atomic_write_bytes(sheet, buf.getvalue().encode())
    return js, sheet


__all__ = ["FIELDS", "summary_rows", "write_summary"]

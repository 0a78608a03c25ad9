"""Plots: accuracy against bit error rate with confidence bands."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    from mcel.io import atomic_write_bytes

    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_accuracy_vs_ber(curves: Mapping[str, list[dict]], path: str | Path, *,
                         title: str = "Accuracy under bit errors", log_x: bool = False) -> Path:
    """One line per method with its 95% band. ``curves[name]`` is a list of rows
    ``{"ber", "mean", "ci_low", "ci_high"}`` (``EvalResult.table()``)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rows in curves.items():
        rows = sorted(rows, key=lambda r: r["ber"])
        xs = [100 * r["ber"] for r in rows]
        line, = ax.plot(xs, [100 * r["mean"] for r in rows], marker="o", ms=3, label=name)
        ax.fill_between(xs, [100 * r["ci_low"] for r in rows], [100 * r["ci_high"] for r in rows],
                        color=line.get_color(), alpha=0.2, lw=0)
    if log_x:
        ax.set_xscale("symlog", linthresh=min(100 * r["ber"] for rs in curves.values()
                                              for r in rs if r["ber"] > 0))
    ax.set_xlabel("bit error rate (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_margin_histograms(margins: Mapping[str, list[float]], path: str | Path, *,
                           title: str = "Output margins") -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, m in margins.items():
        ax.hist(m, bins=40, alpha=0.5, label=name, density=True)
    ax.set_xlabel("output margin (target logit - best other)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)

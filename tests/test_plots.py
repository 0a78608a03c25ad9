"""Figures draw each quantity in the unit its inputs use: BERs as the fractions given,
accuracies in percent; read back from the matplotlib objects, not from pixels."""

import matplotlib.pyplot as plt
import pytest

from mcel.plots import BER_LABEL, accuracy_vs_ber_figure, tolerable_ber_figure

CURVES = {
    "CE": [{"ber": b, "mean": m, "ci_low": m - 0.01, "ci_high": m + 0.01}
           for b, m in [(0.0, 0.97), (0.01, 0.9), (0.02, 0.8), (0.05, 0.5)]],
    "MCEL": [{"ber": b, "mean": m, "ci_low": m - 0.02, "ci_high": m + 0.02}
             for b, m in [(0.0, 0.96), (0.01, 0.94), (0.02, 0.9), (0.05, 0.7)]],
}


def _tick_values(ax):
    """The numbers the x tick labels print, and where the ticks are."""
    ax.figure.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    return ([float(t.get_text().replace("\u2212", "-")) for t in labels],
            [t.get_position()[0] for t in labels])


def test_accuracy_plot_draws_bers_as_fractions_and_accuracy_in_percent():
    fig = accuracy_vs_ber_figure(CURVES)
    ax = fig.axes[0]
    try:
        assert ax.get_xlabel() == BER_LABEL and "%" not in BER_LABEL
        assert ax.get_ylabel() == "accuracy (%)"
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        for name, rows in CURVES.items():
            assert list(lines[name].get_xdata()) == [r["ber"] for r in rows]
            assert list(lines[name].get_ydata()) == pytest.approx([100 * r["mean"]
                                                                   for r in rows])
        # the tick labels print the positions they stand at: no hidden scaling
        printed, at = _tick_values(ax)
        assert printed == pytest.approx(at) and max(printed) <= 0.06
    finally:
        plt.close(fig)


def test_accuracy_plot_on_a_log_axis_keeps_the_fractions():
    fig = accuracy_vs_ber_figure(CURVES, log_x=True)
    ax = fig.axes[0]
    try:
        assert ax.get_xscale() == "symlog" and ax.get_xlabel() == BER_LABEL
        lo, hi = ax.get_xlim()
        assert lo <= 0 and 0.05 <= hi < 1  # the axis spans the BERs themselves
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert max(ticks) <= 0.1
    finally:
        plt.close(fig)


def test_tolerable_ber_plot_draws_fractions():
    values = {"CE": {"mean": 0.004, "low": 0.002, "high": 0.006, "censored": False},
              "MCEL": {"mean": 0.02, "low": 0.02, "high": 0.02, "censored": True}}
    fig = tolerable_ber_figure(values, grid_max=0.02)
    ax = fig.axes[0]
    try:
        assert ax.get_ylabel() == f"tolerable {BER_LABEL}"
        points = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 1
                  and ln.get_marker() in ("o", "^")]
        assert sorted(float(ln.get_ydata()[0]) for ln in points) == [0.004, 0.02]
        grid_line = next(ln for ln in ax.get_lines() if ln.get_label() == "largest BER evaluated")
        assert list(grid_line.get_ydata()) == [0.02, 0.02]
    finally:
        plt.close(fig)

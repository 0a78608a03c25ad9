"""Plots: accuracy against bit error rate with confidence bands, tolerable BERs.

Units as everywhere in mcel's human output: a bit error rate is drawn as the fraction
the inputs use (``--ber 0.01``, grid files, JSON), an accuracy in percent. Each plot
is a ``*_figure`` function that returns the matplotlib figure (tests read its axes) and
a ``plot_*`` function that saves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    import io

    from mcel.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


BER_LABEL = "bit error rate (fraction of bits)"


def accuracy_vs_ber_figure(curves: Mapping[str, list[dict]], *,
                           title: str = "Accuracy under bit errors", log_x: bool = False):
    """One line per method with its 95% band. ``curves[name]`` is a list of rows
    ``{"ber", "mean", "ci_low", "ci_high"}`` (``EvalResult.table()``): the BERs drawn as
    they are (fractions), the accuracies in percent."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, rows in curves.items():
        rows = sorted(rows, key=lambda r: r["ber"])
        xs = [r["ber"] for r in rows]
        line, = ax.plot(xs, [100 * r["mean"] for r in rows], marker="o", ms=3, label=name)
        ax.fill_between(xs, [100 * r["ci_low"] for r in rows], [100 * r["ci_high"] for r in rows],
                        color=line.get_color(), alpha=0.2, lw=0)
    if log_x:
        ax.set_xscale("symlog", linthresh=min(r["ber"] for rs in curves.values()
                                              for r in rs if r["ber"] > 0))
    ax.set_xlabel(BER_LABEL)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_accuracy_vs_ber(curves: Mapping[str, list[dict]], path: str | Path, *,
                         title: str = "Accuracy under bit errors", log_x: bool = False) -> Path:
    """:func:`accuracy_vs_ber_figure`, saved to ``path``."""
    return _save(accuracy_vs_ber_figure(curves, title=title, log_x=log_x), path)


def tolerable_ber_figure(values: Mapping[str, dict], *, title: str = "Tolerable BER",
                         grid_max: float | None = None):
    """One point per method with its interval as error bars. ``values[name]`` is
    ``{"mean", "low", "high", "censored"}`` (BERs as fractions, drawn so); a censored
    method (a lower bound: some seed never lost a point on its grid) is drawn as an open
    triangle pointing up, and ``grid_max``, the largest BER evaluated, as a dashed line."""
    return _method_points(values, title=title, ylabel=f"tolerable {BER_LABEL}", unit=1.0,
                          line=grid_max, line_label="largest BER evaluated")


def plot_tolerable_ber(values: Mapping[str, dict], path: str | Path, *,
                       title: str = "Tolerable BER", grid_max: float | None = None) -> Path:
    """:func:`tolerable_ber_figure`, saved to ``path``."""
    return _save(tolerable_ber_figure(values, title=title, grid_max=grid_max), path)


def plot_energy_saving(values: Mapping[str, dict], path: str | Path, *,
                       title: str = "Energy saving") -> Path:
    """Dynamic energy saved at each method's lowest safe voltage (fractions, drawn in
    percent), one point per method with the interval its tolerable BER's maps to; open
    triangles where the tolerable BER was a lower bound (so is the saving)."""
    return _save(_method_points(values, title=title, unit=100.0,
                                ylabel="dynamic energy saving vs nominal voltage (%)"), path)


def _method_points(values: Mapping[str, dict], *, title: str, ylabel: str, unit: float,
                   line: float | None = None, line_label: str = ""):
    """One point per method; ``unit``: 100 draws fractions in percent, 1 as they are."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = list(values)
    grid_max = line
    for i, name in enumerate(names):
        v = values[name]
        m = unit * v["mean"]
        err = [[m - unit * v["low"]], [unit * v["high"] - m]]
        color = f"C{i % 10}"
        ax.errorbar([i], [m], yerr=err, fmt="^" if v["censored"] else "o", ms=7, capsize=4,
                    color=color, mfc="none" if v["censored"] else color)
    if grid_max is not None:
        ax.axhline(unit * grid_max, color="grey", ls="--", lw=1, label=line_label)
    if any(v["censored"] for v in values.values()):
        ax.plot([], [], "^", mfc="none", color="grey", label="lower bound (censored)")
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 4 else 0, ha="right"
                  if len(names) > 4 else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


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


def plot_margin_survival(margin, survival, bins: list[dict], path: str | Path, *,
                         certificate=None, cap: int | None = None,
                         title: str = "Margin vs survival") -> Path:
    """Left: each clean-correct sample's margin against the share of trials it
    survived (fractions, drawn in percent), with the decile means (``bins`` from
    :func:`mcel.analysis.survival`).
    Right (with ``certificate``): how many samples need how many output-layer flips;
    ``cap + 1`` is drawn as ``>cap``."""
    import math

    panels = 2 if certificate is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    pts = [(float(m), float(s)) for m, s in zip(margin, survival) if not math.isnan(float(s))]
    if pts:
        ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=6, alpha=0.35, lw=0,
                   label="sample")
    if bins:
        ax.plot([b["margin_mean"] for b in bins], [100 * b["survival_mean"] for b in bins],
                marker="o", color="C3", label="decile mean")
    ax.set_xlabel("clean output margin")
    ax.set_ylabel("survival (% of trials still correct)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if certificate is not None:
        ax2 = axes[0][1]
        values = [int(v) for v in certificate]
        top = cap + 1 if cap is not None else max(values, default=0)
        counts = [values.count(k) for k in range(top + 1)]
        labels = [str(k) for k in range(top + 1)]
        if cap is not None:
            labels[-1] = f">{cap}"
        ax2.bar(range(top + 1), counts, color="C2")
        ax2.set_xticks(range(top + 1), labels, fontsize=7)
        ax2.set_xlabel("fewest output-layer bit flips that change the prediction")
        ax2.set_ylabel("samples")
        ax2.set_title("flip certificate (0: wrong without faults)")
        ax2.grid(alpha=0.3, axis="y")
    return _save(fig, path)

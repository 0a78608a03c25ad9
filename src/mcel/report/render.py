"""Rendering the report: numbers as text, the document as blocks (headings, paragraphs,
tables, images) written as Markdown and as one self-contained HTML page, and each
group's plots, table and provenance.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any

from mcel.report.stats import (
    CE_LABEL,
    Cell,
    Group,
    Line,
    clean_cell,
    delta,
    paired_delta,
    uniform_spec,
)


def best_mcel(group: Group, baseline: str = CE_LABEL) -> str:
    """One sentence: the MCEL variant with the highest mean accuracy over the group's
    nonzero BERs, against the ``baseline`` method (CE unless told)."""
    ce = group.line(baseline)
    mcel = [ln for ln in group.lines if ln.label.startswith("MCEL") and ln is not ce]
    if ce is None or not mcel:
        return (f"Best MCEL vs {baseline}: not available (this group needs a {baseline} "
                "line and an MCEL line).")
    bers = [b for b in group.bers if b > 0 and b in ce.curve]

    def score(ln: Line) -> float:
        vals = [ln.curve[b].mean for b in bers if b in ln.curve]
        return sum(vals) / len(vals) if vals else -math.inf

    best = max(mcel, key=score)
    shared = [b for b in bers if b in best.curve]
    if not shared:
        return f"Best MCEL vs {baseline}: {best.label} shares no nonzero BER with it."
    parts = []
    for b in shared:
        d = delta(best, ce, b)
        assert d is not None
        parts.append(f"BER {b:g}: {pct(best.curve[b].mean)}% vs {pct(ce.curve[b].mean)}% "
                     f"({signed(d.mean)} points)")
    clean = ""
    if best.clean is not None and ce.clean is not None:
        clean = (f"; clean {pct(best.clean.mean)}% vs {pct(ce.clean.mean)}% "
                 f"({signed(best.clean.mean - ce.clean.mean)} points)")
    return (f"Best MCEL vs {baseline}: {best.label} (seeds {seeds_text(best)}) — "
            + "; ".join(parts) + clean)


def pct(v: float) -> str:
    return f"{100 * v:.2f}"


def signed(v: float) -> str:
    return f"{100 * v:+.2f}"


def fmt_cell(c: Cell | None) -> str:
    """Accuracy in percent: ``mean [low, high]``, or ``mean`` when there is no width."""
    if c is None:
        return "—"
    if c.low == c.high == c.mean:
        return pct(c.mean)
    return f"{pct(c.mean)} [{pct(c.low)}, {pct(c.high)}]"


def ber_text(v: float) -> str:
    """A BER as the fraction the inputs use, to three significant digits: tolerable
    BERs often lie below the first grid step."""
    return f"{v:.3g}"


def fmt_tolerable(c: Cell | None, censored: bool) -> str:
    """A tolerable BER (a fraction, as the BER columns), ``mean [low, high]``; ``≥``
    when a seed never lost a point on its grid (its value, the grid's top, is a lower
    bound)."""
    if c is None:
        return "—"
    mark = "≥ " if censored else ""
    if c.low == c.high == c.mean:
        return mark + ber_text(c.mean)
    return f"{mark}{ber_text(c.mean)} [{ber_text(c.low)}, {ber_text(c.high)}]"


def fmt_delta(c: Cell | None) -> str:
    if c is None:
        return "—"
    if not c.across_seeds:
        return signed(c.mean)
    return f"{signed(c.mean)} [{signed(c.low)}, {signed(c.high)}]"


def seeds_text(line: Line) -> str:
    return ", ".join(str(s) for s in line.seeds)


def versions_text(v: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v[k]}" for k in sorted(v)) or "not recorded"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]


# -- the document: blocks rendered as Markdown and as HTML ------------------------------

Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("table", header, rows) | ("img", file, alt)


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            header, rows = b[1], b[2]

            def cells(row):
                return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

            out.append("\n".join([cells(header), "|" + "---|" * len(header)]
                                 + [cells(r) for r in rows]))
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def to_html(blocks: list[Block], images: dict[str, bytes], title: str) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "table":
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>"
                           for r in b[2])
            head = "".join(f"<th>{e(str(c))}</th>" for c in b[1])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(images[b[1]]).decode()
            out.append(f"<img alt='{e(b[2])}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>\n")
    return "\n".join(out)


def group_figures(i: int, g: Group, out_dir: Path, images: dict[str, bytes]) -> list[Block]:
    """The figures of group ``i`` (accuracy vs BER; margin histograms and tolerable BERs
    where there are any), written beside the report and kept in ``images`` for the HTML
    page. A new report plot is one more entry here."""
    from mcel.plots import plot_accuracy_vs_ber, plot_margin_histograms, plot_tolerable_ber

    stem = f"{i:02d}-{slug(f'{g.dataset}_{g.model}_{g.quant}_{g.fmt}_{g.error_model}')}"
    pos = [b for b in g.bers if b > 0]
    curves = {ln.label: [{"ber": b, "mean": c.mean, "ci_low": c.low, "ci_high": c.high}
                         for b, c in ln.curve.items()] for ln in g.lines}
    margins = {ln.label: ln.margins for ln in g.lines if ln.margins}
    tolerable = {ln.label: {"mean": ln.tolerable.mean, "low": ln.tolerable.low,
                            "high": ln.tolerable.high, "censored": bool(ln.censored_seeds)}
                 for ln in g.lines if ln.tolerable is not None}
    figures = [  # (file suffix, caption, drawing into a path) for what this group has
        ("accuracy", "accuracy vs BER", lambda path: plot_accuracy_vs_ber(
            curves, path, title=g.title, log_x=len(pos) >= 2 and max(pos) / min(pos) >= 100)),
    ]
    if margins:
        figures.append(("margins", "margin histograms", lambda path: plot_margin_histograms(
            margins, path, title=f"clean output margins, {g.title}")))
    if tolerable:
        figures.append(("tolerable", "tolerable BER", lambda path: plot_tolerable_ber(
            tolerable, path, title=f"tolerable BER, {g.title}", grid_max=max(pos, default=None))))
    blocks: list[Block] = []
    for suffix, caption, draw in figures:
        png = f"{stem}-{suffix}.png"
        draw(out_dir / png)
        images[png] = (out_dir / png).read_bytes()
        blocks.append(("img", png, f"{caption}, {g.title}"))
    return blocks


def faults_text(g: Group) -> str:
    """What the BER columns of group ``g`` flip: said once here, as the title names the
    error model only when it is not plain uniform."""
    if uniform_spec(g.error_model):
        return ("Faults: every stored weight bit flips independently at the column's BER "
                "(uniform, persistent within a trial).")
    return f"Faults: error model {g.error_model}; each BER sets its largest rate."


def group_blocks(i: int, g: Group, out_dir: Path, images: dict[str, bytes], *,
                 baseline: str = CE_LABEL) -> list[Block]:
    """Group ``i``'s section: heading, figures, table with each method's difference to
    ``baseline`` (CE unless told), the best MCEL against it, and where every number came
    from."""
    blocks: list[Block] = [("h2", f"{i}. {g.title}"), *group_figures(i, g, out_dir, images)]
    ce = g.line(baseline)
    # BER 0 is the clean accuracy again (no flips): one column for both
    bers = [b for b in g.bers if b > 0]
    header = (["method", "seeds", "clean acc %"] + [f"BER {b:g}: acc %" for b in bers]
              + [f"Δ vs {baseline} clean (points)"]
              + [f"Δ vs {baseline} @ {b:g} (points)" for b in bers]
              + ["train s", "tolerable BER"])
    rows = []
    for ln in g.lines:
        vs_ce = ce is not None and ln is not ce
        clean, ce_clean = clean_cell(ln), (clean_cell(ce) if ce is not None else None)
        deltas = [fmt_delta(paired_delta(clean, ce_clean))
                  if vs_ce and clean and ce_clean else "—"]
        deltas += [fmt_delta(delta(ln, ce, b)) if vs_ce else "—" for b in bers]
        rows.append([ln.label, seeds_text(ln), fmt_cell(clean)]
                    + [fmt_cell(ln.curve.get(b)) for b in bers] + deltas
                    + ["—" if ln.train_seconds is None else f"{ln.train_seconds:.1f}",
                       fmt_tolerable(ln.tolerable, bool(ln.censored_seeds))])
    blocks.append(("table", header, rows))
    blocks.append(("p", best_mcel(g, baseline)))
    seeds_note = []
    for ln in g.lines:
        trials = sorted(set(ln.trials))
        images = f", test images {', '.join(map(str, ln.images))}" if ln.images else ""
        seeds_note.append(f"{ln.label}: training seeds {seeds_text(ln)}, evaluation seeds "
                          f"{', '.join(map(str, ln.eval_seeds))}, trials per run and BER "
                          f"{', '.join(map(str, trials))}{images}, runs "
                          f"{', '.join(r.run_id for r in ln.runs)}")
    blocks.append(("p", "Accuracy: mean over training seeds of each run's mean over trials; "
                        "[95% t-interval across seeds], or the run's own interval over trials "
                        "when there is one seed, clipped to [0, 100]. Δ: paired by seed "
                        "(interval across seeds) when at least two seeds are shared with "
                        f"{baseline}, else difference of means. Clean: the accuracy without "
                        "faults (BER 0). " + faults_text(g) + " Tolerable BER (a fraction, "
                        "as the BERs): per run, the largest BER whose accuracy stays within "
                        "1 point of the run's clean accuracy, linear between grid points "
                        "(from BER 0 at the clean accuracy); "
                        "mean and interval across seeds (none for one seed); ≥ when a seed "
                        "never lost the point on its grid, whose largest BER then counts "
                        "(a lower bound). "
                        "Where each number comes from: " + "; ".join(seeds_note) + "."))
    return blocks


__all__ = ["Block", "best_mcel", "fmt_cell", "fmt_delta", "fmt_tolerable", "group_blocks",
           "group_figures",
           "to_html", "to_markdown"]


def energy_blocks(groups: list[Group], curve, out_dir: Path,
                  images: dict[str, bytes]) -> list[Block]:
    """What each method's tolerable BER buys on the memory whose voltage-to-BER ``curve``
    (`mcel.energy.VoltageCurve`) is given: its lowest safe voltage and dynamic energy
    saving, one table and one plot per group. The saving falls as the BER falls, so the
    tolerable BER's interval maps onto the saving's."""
    from mcel.plots import plot_energy_saving

    blocks: list[Block] = [
        ("h2", "Energy at the lowest safe voltage"),
        ("p", f"Voltage curve: {len(curve.voltages)} points, {curve.voltages[0]:g} to "
              f"{curve.nominal:g} V (nominal). Lowest safe voltage: the lowest at which the "
              "memory's BER (interpolated in log BER) stays at or below the method's mean "
              "tolerable BER; saving: 1 - (V / V_nominal)^2; where the tolerable BER "
              "was a lower bound (≥), the voltage is an upper bound (≤) and the saving a "
              "lower one (≥).")]
    for i, g in enumerate(groups, 1):
        lines = [ln for ln in g.lines if ln.tolerable is not None]
        if not lines:
            continue
        rows, points = [], {}
        for ln in lines:
            t, mark = ln.tolerable, "≥ " if ln.censored_seeds else ""
            save = [curve.energy_saving(b) for b in (t.mean, t.low, t.high)]
            v_mark = "≤ " if ln.censored_seeds else ""  # more BER tolerated: lower V
            rows.append([ln.label, mark + fmt_tolerable(t, False),
                         f"{v_mark}{curve.lowest_safe_voltage(t.mean):.3f}",
                         f"{mark}{100 * save[0]:.1f} [{100 * save[1]:.1f}, {100 * save[2]:.1f}]"])
            points[ln.label] = {"mean": save[0], "low": save[1], "high": save[2],
                                "censored": bool(ln.censored_seeds)}
        png = f"{i:02d}-{slug(f'{g.dataset}_{g.model}_{g.quant}_{g.fmt}_{g.error_model}')}" \
              "-energy.png"
        plot_energy_saving(points, out_dir / png, title=f"energy saving, {g.title}")
        images[png] = (out_dir / png).read_bytes()
        blocks += [("h3", f"{i}. {g.title}"), ("img", png, f"energy saving, {g.title}"),
                   ("table", ["method", "tolerable BER", "lowest safe V",
                              "energy saving %"], rows)]
        verdict = energy_verdict(lines, g.line(CE_LABEL), curve)
        if verdict:
            blocks.append(("p", verdict))
    return blocks


def energy_verdict(lines: list, ce, curve) -> str:
    """The designer's sentence: the best MCEL method (and the best method, when another
    one is better) against CE, as voltages and dynamic energy at <= 1 point accuracy loss."""
    if ce is None or ce.tolerable is None:
        return ""
    v_ce = curve.lowest_safe_voltage(ce.tolerable.mean)
    others = [ln for ln in lines if ln is not ce]
    mcel = [ln for ln in others if ln.label.startswith("MCEL")]
    picks = [max(ls, key=lambda ln: ln.tolerable.mean) for ls in (mcel, others) if ls]
    said = []
    if len(picks) == 2 and picks[0] is picks[1]:
        picks = picks[:1]
    for ln in picks:
        v = curve.lowest_safe_voltage(ln.tolerable.mean)
        # a censored tolerable BER is a lower bound: the voltage an upper one
        at, by = ("≤ ", "≥ ") if ln.censored_seeds else ("", "")
        saving = 1.0 - (v / v_ce) ** 2
        more = f"{by}{100 * saving:.1f}% less" if saving >= 0 else f"{-100 * saving:.1f}% more"
        said.append(f"{ln.label} lets this memory run at {at}{v:.3f} V instead of CE's "
                    f"{v_ce:.3f} V: {more} dynamic energy than at CE's voltage")
    return ("; ".join(said) + " (each at <= 1 point below its own clean accuracy, mean "
            "tolerable BER over seeds; the intervals above say how sure).") if said else ""


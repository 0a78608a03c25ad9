"""A study report from the results database: plots, tables, and where every number
came from.

Runs are grouped by (dataset, model, quantization, number format, error model); within
a group, each training method (``runs.method``) is one line. A method's accuracy at a
BER is the mean over its training seeds of each run's mean accuracy over trials; its
band is a 95% Student-t interval *across seeds* when there are at least two (the spread
that matters when comparing training methods), else the run's own interval over trials.
Its tolerable BER (:func:`mcel.analysis.tolerable_ber`) is taken per run from that
run's curve and clean accuracy, then averaged over seeds the same way.

The report names, for every number, the training seeds, the evaluation seeds and
trials, the software versions (``runs.versions``) and the config hashes (``run_id``)
behind it, and is written as ``report.md`` (with PNGs beside it) and ``report.html``
(one self-contained page, images embedded).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

from mcel.analysis import tolerable_ber
from mcel.errors import MCELError
from mcel.evaluate import t_interval

CE_LABEL = "CE"
# Keys that do not change what a run is (where data lives, which device ran it).
_NOT_A_VARIANT = ("seed", "data_dir", "device")


# -- reading the database ---------------------------------------------------------------

@dataclass
class Run:
    run_id: str
    method: str
    config: dict[str, Any]
    clean_acc: float | None
    train_seconds: float | None
    margins: list[float] | None
    versions: dict[str, Any]
    grid: str | None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def variant(self) -> str:
        """Hash of the config without its seed: runs that differ only by seed share it."""
        d = {k: v for k, v in self.config.items() if k not in _NOT_A_VARIANT}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class Eval:
    eval_id: int
    run_id: str
    fmt: str
    error_model: str
    ber: float
    eval_seed: int
    mean: float
    ci_low: float | None
    ci_high: float | None
    trials: int | None
    clean_acc: float | None
    accuracies: list[float] = field(default_factory=list)  # from the trials table


def _open(db_path: str | Path) -> sqlite3.Connection:
    """Open read-only (a report never writes to the study), or fail in one line."""
    path = Path(db_path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.db"))
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise MCELError(f"{path} is a folder; pass the results database file{hint}")
    if not path.is_file():
        raise MCELError(f"results database {path} does not exist")
    url = f"file:{pathname2url(str(path.resolve()))}?mode=ro"
    try:
        try:
            con = sqlite3.connect(url, uri=True)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master "
                                                "WHERE type='table'")}
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e):
                raise
            # a finished database in a read-only folder: SQLite cannot make the WAL
            # index beside it, so read it as an unchanging file
            con = sqlite3.connect(url + "&immutable=1", uri=True)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master "
                                                "WHERE type='table'")}
        con.row_factory = sqlite3.Row
    except sqlite3.DatabaseError as e:
        raise MCELError(f"{path} is not an SQLite database ({e})") from None
    need = {"runs": {"run_id", "method", "config", "clean_acc", "train_seconds", "margins",
                     "versions"},
            "evals": {"eval_id", "run_id", "fmt", "error_model", "ber", "eval_seed", "mean",
                      "ci_low", "ci_high", "trials"}}
    for table, cols in need.items():
        have = ({r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                if table in tables else set())
        if not cols <= have:
            con.close()
            raise MCELError(f"{path} is not an mcel results database (no usable '{table}' "
                            "table); pass the file written by 'mcel sweep'")
    return con


def _json(text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def _margin_list(obj: Any) -> list[float] | None:
    if isinstance(obj, dict):
        obj = obj.get("margins", obj.get("values"))
    if isinstance(obj, list) and obj and all(isinstance(v, (int, float)) for v in obj):
        return [float(v) for v in obj]
    return None


def load_results(db_path: str | Path) -> tuple[dict[str, Run], list[Eval], list[str]]:
    """(runs by run_id, evals, notes about rows that could not be used)."""
    con = _open(db_path)
    notes: list[str] = []
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        grid = "grid" if "grid" in cols else "NULL AS grid"
        runs: dict[str, Run] = {}
        for r in con.execute(f"SELECT run_id, method, config, clean_acc, train_seconds, margins, "
                             f"versions, {grid} FROM runs ORDER BY run_id"):
            config = _json(r["config"], None)
            if not isinstance(config, dict):
                notes.append(f"run {r['run_id']}: config is not a JSON object; left out")
                continue
            versions = _json(r["versions"], {})
            runs[r["run_id"]] = Run(r["run_id"], r["method"], config, r["clean_acc"],
                                    r["train_seconds"], _margin_list(_json(r["margins"], None)),
                                    versions if isinstance(versions, dict) else {}, r["grid"])
        if not runs:
            raise MCELError(f"{db_path} holds no runs yet; fill it with a sweep first")
        ecols = {r[1] for r in con.execute("PRAGMA table_info(evals)")}
        clean = "clean_acc" if "clean_acc" in ecols else "NULL AS clean_acc"
        evals: dict[int, Eval] = {}
        for r in con.execute(f"SELECT eval_id, run_id, fmt, error_model, ber, eval_seed, mean, "
                             f"ci_low, ci_high, trials, {clean} FROM evals ORDER BY eval_id"):
            if r["run_id"] not in runs or r["mean"] is None:
                continue
            evals[r["eval_id"]] = Eval(r["eval_id"], r["run_id"], r["fmt"], r["error_model"],
                                       float(r["ber"]), r["eval_seed"], float(r["mean"]),
                                       r["ci_low"], r["ci_high"], r["trials"], r["clean_acc"])
        has_trials = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                 "name='trials'").fetchone()
        if has_trials:
            for r in con.execute("SELECT eval_id, accuracy FROM trials ORDER BY eval_id, trial"):
                if r["eval_id"] in evals:
                    evals[r["eval_id"]].accuracies.append(float(r["accuracy"]))
    except sqlite3.DatabaseError as e:
        raise MCELError(f"cannot read {db_path}: {e}") from None
    finally:
        con.close()
    if not evals:
        raise MCELError(f"{db_path} holds {len(runs)} runs but no evaluations yet; "
                        "nothing to report")
    return runs, list(evals.values()), notes


# -- aggregation ------------------------------------------------------------------------

@dataclass
class Cell:
    """One number of the report with its interval and what it came from."""

    mean: float
    low: float
    high: float
    per_seed: dict[Any, float]  # training seed -> per-run value
    across_seeds: bool  # interval over seeds (True) or over one run's trials (False)


@dataclass
class Line:
    label: str
    runs: list[Run]
    curve: dict[float, Cell]
    clean: Cell | None
    train_seconds: float | None
    margins: list[float]
    eval_seeds: list[int]
    trials: list[int]  # trial counts per (run, BER), for the provenance line
    tolerable: Cell | None = None  # tolerable BER, per seed and over seeds
    # seeds that never lost a point on their grid: their value is its top, a lower bound
    censored_seeds: list[Any] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return sorted((r.seed for r in self.runs), key=str)


@dataclass
class Group:
    dataset: str
    model: str
    quant: str
    fmt: str
    error_model: str
    lines: list[Line]

    @property
    def title(self) -> str:
        return (f"{self.dataset} / {self.model} / {self.quant} / {self.fmt} / "
                f"error model {self.error_model}")

    @property
    def bers(self) -> list[float]:
        return sorted({b for ln in self.lines for b in ln.curve})

    def line(self, label: str) -> Line | None:
        return next((ln for ln in self.lines if ln.label == label), None)


def _cell(per_seed: dict[Any, float], fallback: tuple[float, float] | None) -> Cell:
    """An accuracy: its t-interval is clipped to [0, 1], where accuracies live (with two
    seeds the interval is wide and would otherwise run past 100%)."""
    vals = list(per_seed.values())
    if len(vals) >= 2:
        m, lo, hi = t_interval(vals)
        return Cell(m, max(0.0, lo), min(1.0, hi), per_seed, True)
    m = vals[0]
    lo, hi = fallback if fallback is not None else (m, m)
    return Cell(m, max(0.0, lo), min(1.0, hi), per_seed, False)


def _run_at_ber(evs: list[Eval]) -> tuple[float, tuple[float, float] | None, int]:
    """A run's mean accuracy at one BER (over all its eval seeds) and its own interval."""
    accs = [a for e in evs for a in e.accuracies]
    n = sum(e.trials or len(e.accuracies) or 1 for e in evs)
    if len(evs) == 1:
        e = evs[0]
        ci = (e.ci_low, e.ci_high) if e.ci_low is not None and e.ci_high is not None else None
        return e.mean, ci, n
    if accs:
        m, lo, hi = t_interval(accs)
        return m, (lo, hi), n
    w = [e.trials or 1 for e in evs]
    return sum(e.mean * k for e, k in zip(evs, w)) / sum(w), None, n


def aggregate(runs: dict[str, Run], evals: list[Eval]) -> tuple[list[Group], list[str]]:
    notes: list[str] = []
    by_group: dict[tuple, dict[str, list[Eval]]] = defaultdict(lambda: defaultdict(list))
    for e in evals:
        c = runs[e.run_id].config
        key = (str(c.get("dataset", "?")), str(c.get("model", "?")), str(c.get("quant", "?")),
               e.fmt, e.error_model)
        by_group[key][e.run_id].append(e)
    groups = []
    for key in sorted(by_group):
        run_evals = by_group[key]
        # One line per method label; a label whose runs differ in more than their seed
        # (another grid with other epochs, say) is split and tagged with a config hash.
        by_label: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for rid in run_evals:
            by_label[runs[rid].method][runs[rid].variant()].append(rid)
        lines = []
        for label, variants in by_label.items():
            for variant, rids in sorted(variants.items()):
                name = label if len(variants) == 1 else f"{label} [{variant}]"
                if len(variants) > 1:
                    notes.append(f"{'/'.join(key)}: '{label}' has runs of {len(variants)} "
                                 f"configs that differ in more than the seed; shown as "
                                 f"'{label} [config hash]'")
                lines.append(_line(name, [runs[r] for r in rids], run_evals, notes))
        lines.sort(key=lambda ln: (not ln.label.startswith(CE_LABEL + " ") and
                                   ln.label != CE_LABEL, ln.label))
        groups.append(Group(*key, lines))
    return groups, sorted(set(notes))


def _line(label: str, line_runs: list[Run], run_evals: dict[str, list[Eval]],
          notes: list[str]) -> Line:
    seen: dict[Any, str] = {}
    for r in line_runs:
        if r.seed in seen:  # same seed, same config except data_dir/device: keep one
            notes.append(f"'{label}': runs {seen[r.seed]} and {r.run_id} share seed {r.seed}")
        seen[r.seed] = r.run_id
    per_ber: dict[float, dict[Any, float]] = defaultdict(dict)
    own_ci: dict[float, tuple[float, float] | None] = {}
    trials, eval_seeds = [], set()
    clean: dict[Any, float] = {}
    for r in line_runs:
        evs_by_ber: dict[float, list[Eval]] = defaultdict(list)
        for e in run_evals[r.run_id]:
            evs_by_ber[e.ber].append(e)
            eval_seeds.add(e.eval_seed)
        for ber, evs in evs_by_ber.items():
            m, ci, n = _run_at_ber(evs)
            per_ber[ber][r.seed] = m
            own_ci[ber] = ci
            trials.append(n)
        # the clean accuracy on the images the BER columns use (a grid's limit_test may
        # be smaller than the training run's test set); the run's own where none is kept
        cs = [e.clean_acc for e in run_evals[r.run_id] if e.clean_acc is not None]
        if cs:
            clean[r.seed] = cs[0] if len(set(cs)) == 1 else sum(cs) / len(cs)
        elif r.clean_acc is not None:
            clean[r.seed] = float(r.clean_acc)
    tolerable, censored = _tolerable(per_ber, clean)
    secs = [r.train_seconds for r in line_runs if r.train_seconds is not None]
    return Line(
        label=label, runs=line_runs,
        curve={b: _cell(v, own_ci[b]) for b, v in sorted(per_ber.items())},
        clean=_cell(clean, None) if clean else None,
        train_seconds=sum(secs) / len(secs) if secs else None,
        margins=[m for r in line_runs for m in (r.margins or [])],
        eval_seeds=sorted(eval_seeds), trials=trials,
        # a BER cannot be negative: _cell's clip to [0, 1] fits it as well
        tolerable=_cell(tolerable, None) if tolerable else None,
        censored_seeds=sorted(censored, key=str),
    )


def _tolerable(per_ber: dict[float, dict[Any, float]],
               clean: dict[Any, float]) -> tuple[dict[Any, float], list[Any]]:
    """Each seed's tolerable BER from its own curve and clean accuracy (no clean
    accuracy, no threshold: the seed is left out), and the seeds that are censored."""
    values, censored = {}, []
    for seed, c in clean.items():
        if math.isnan(c):
            continue
        bers = sorted(b for b in per_ber if seed in per_ber[b])
        t = tolerable_ber(bers, [per_ber[b][seed] for b in bers], c)
        values[seed] = t.ber
        if t.censored:
            censored.append(seed)
    return values, censored


def delta(line: Line, ce: Line, ber: float) -> Cell | None:
    """``line - CE`` at ``ber``: paired by training seed (a t-interval over the per-seed
    differences) when at least two seeds are shared, else the difference of the means."""
    a, b = line.curve.get(ber), ce.curve.get(ber)
    if a is None or b is None:
        return None
    common = [s for s in a.per_seed if s in b.per_seed]
    if len(common) >= 2:
        diffs = {s: a.per_seed[s] - b.per_seed[s] for s in common}
        m, lo, hi = t_interval(list(diffs.values()))
        return Cell(m, lo, hi, diffs, True)
    d = a.mean - b.mean
    return Cell(d, d, d, {}, False)


def best_mcel(group: Group) -> str:
    """One sentence: the MCEL variant with the highest mean accuracy over the group's
    nonzero BERs, against CE."""
    ce = group.line(CE_LABEL)
    mcel = [ln for ln in group.lines if ln.label.startswith("MCEL")]
    if ce is None or not mcel:
        return "Best MCEL vs CE: not available (this group needs a CE line and an MCEL line)."
    bers = [b for b in group.bers if b > 0 and b in ce.curve]

    def score(ln: Line) -> float:
        vals = [ln.curve[b].mean for b in bers if b in ln.curve]
        return sum(vals) / len(vals) if vals else -math.inf

    best = max(mcel, key=score)
    shared = [b for b in bers if b in best.curve]
    if not shared:
        return f"Best MCEL vs CE: {best.label} shares no nonzero BER with CE."
    parts = []
    for b in shared:
        d = delta(best, ce, b)
        assert d is not None
        parts.append(f"BER {b:g}: {_pct(best.curve[b].mean)}% vs {_pct(ce.curve[b].mean)}% "
                     f"({_signed(d.mean)} points)")
    clean = ""
    if best.clean is not None and ce.clean is not None:
        clean = (f"; clean {_pct(best.clean.mean)}% vs {_pct(ce.clean.mean)}% "
                 f"({_signed(best.clean.mean - ce.clean.mean)} points)")
    return f"Best MCEL vs CE: {best.label} (seeds {_seeds(best)}) — " + "; ".join(parts) + clean


# -- formatting -------------------------------------------------------------------------

def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _signed(v: float) -> str:
    return f"{100 * v:+.2f}"


def fmt_cell(c: Cell | None) -> str:
    """Accuracy in percent: ``mean [low, high]``, or ``mean`` when there is no width."""
    if c is None:
        return "—"
    if c.low == c.high == c.mean:
        return _pct(c.mean)
    return f"{_pct(c.mean)} [{_pct(c.low)}, {_pct(c.high)}]"


def _ber_pct(v: float) -> str:
    # three significant digits: tolerable BERs often lie below the first grid step
    return f"{100 * v:#.3g}".rstrip(".")


def fmt_tolerable(c: Cell | None, censored: bool) -> str:
    """A tolerable BER in percent, as :func:`fmt_cell` writes accuracies; ``≥`` when a
    seed never lost a point on its grid (its value, the grid's top, is a lower bound)."""
    if c is None:
        return "—"
    mark = "≥ " if censored else ""
    if c.low == c.high == c.mean:
        return mark + _ber_pct(c.mean)
    return f"{mark}{_ber_pct(c.mean)} [{_ber_pct(c.low)}, {_ber_pct(c.high)}]"


def fmt_delta(c: Cell | None) -> str:
    if c is None:
        return "—"
    if not c.across_seeds:
        return _signed(c.mean)
    return f"{_signed(c.mean)} [{_signed(c.low)}, {_signed(c.high)}]"


def _seeds(line: Line) -> str:
    return ", ".join(str(s) for s in line.seeds)


def _versions(v: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v[k]}" for k in sorted(v)) or "not recorded"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80]


# -- the document: blocks rendered as Markdown and as HTML ------------------------------

Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("table", header, rows) | ("img", file, alt)


def _md(blocks: list[Block]) -> str:
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


def _html(blocks: list[Block], images: dict[str, bytes], title: str) -> str:
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


def _group_blocks(i: int, g: Group, out_dir: Path, images: dict[str, bytes]) -> list[Block]:
    from mcel.plots import plot_accuracy_vs_ber, plot_margin_histograms, plot_tolerable_ber

    blocks: list[Block] = [("h2", f"{i}. {g.title}")]
    slug = f"{i:02d}-{_slug(f'{g.dataset}_{g.model}_{g.quant}_{g.fmt}_{g.error_model}')}"
    curves = {ln.label: [{"ber": b, "mean": c.mean, "ci_low": c.low, "ci_high": c.high}
                         for b, c in ln.curve.items()] for ln in g.lines}
    pos = [b for b in g.bers if b > 0]
    acc_png = f"{slug}-accuracy.png"
    plot_accuracy_vs_ber(curves, out_dir / acc_png, title=g.title,
                         log_x=len(pos) >= 2 and max(pos) / min(pos) >= 100)
    images[acc_png] = (out_dir / acc_png).read_bytes()
    blocks.append(("img", acc_png, f"accuracy vs BER, {g.title}"))
    margins = {ln.label: ln.margins for ln in g.lines if ln.margins}
    if margins:
        m_png = f"{slug}-margins.png"
        plot_margin_histograms(margins, out_dir / m_png, title=f"clean output margins, {g.title}")
        images[m_png] = (out_dir / m_png).read_bytes()
        blocks.append(("img", m_png, f"margin histograms, {g.title}"))
    tolerable = {ln.label: {"mean": ln.tolerable.mean, "low": ln.tolerable.low,
                            "high": ln.tolerable.high, "censored": bool(ln.censored_seeds)}
                 for ln in g.lines if ln.tolerable is not None}
    if tolerable:
        t_png = f"{slug}-tolerable.png"
        plot_tolerable_ber(tolerable, out_dir / t_png, title=f"tolerable BER, {g.title}",
                           grid_max=max(pos, default=None))
        images[t_png] = (out_dir / t_png).read_bytes()
        blocks.append(("img", t_png, f"tolerable BER, {g.title}"))

    ce = g.line(CE_LABEL)
    bers = g.bers
    header = (["method", "seeds", "clean acc %"] + [f"BER {b:g} %" for b in bers]
              + [f"Δ vs CE @ {b:g} (points)" for b in bers] + ["train s", "tolerable BER %"])
    rows = []
    for ln in g.lines:
        deltas = [fmt_delta(delta(ln, ce, b)) if ce is not None and ln is not ce else "—"
                  for b in bers]
        rows.append([ln.label, _seeds(ln), fmt_cell(ln.clean)]
                    + [fmt_cell(ln.curve.get(b)) for b in bers] + deltas
                    + ["—" if ln.train_seconds is None else f"{ln.train_seconds:.1f}",
                       fmt_tolerable(ln.tolerable, bool(ln.censored_seeds))])
    blocks.append(("table", header, rows))
    blocks.append(("p", best_mcel(g)))
    seeds_note = []
    for ln in g.lines:
        trials = sorted(set(ln.trials))
        seeds_note.append(f"{ln.label}: training seeds {_seeds(ln)}, evaluation seeds "
                          f"{', '.join(map(str, ln.eval_seeds))}, trials per run and BER "
                          f"{', '.join(map(str, trials))}, runs "
                          f"{', '.join(r.run_id for r in ln.runs)}")
    blocks.append(("p", "Accuracy: mean over training seeds of each run's mean over trials; "
                        "[95% t-interval across seeds], or the run's own interval over trials "
                        "when there is one seed, clipped to [0, 100]. Δ: paired by seed "
                        "(interval across seeds) when at least two seeds are shared with CE, "
                        "else difference of means. The error model is the stored spec; each BER "
                        "sets its largest rate. Tolerable BER: per run, the largest BER "
                        "whose accuracy stays within 1 point of the run's clean accuracy, "
                        "linear between grid points (from BER 0 at the clean accuracy); "
                        "mean and interval across seeds (none for one seed); ≥ when a seed "
                        "never lost the point on its grid, whose largest BER then counts "
                        "(a lower bound). "
                        "Where each number comes from: " + "; ".join(seeds_note) + "."))
    return blocks


def build_report(db_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and the PNGs for the study in ``db_path``
    into ``out_dir``; returns the path of ``report.md``.

    Raises :class:`MCELError` (one line) for a missing, empty or foreign database.
    """
    from mcel import __version__
    from mcel.io import atomic_write_bytes, check_writable

    runs, evals, notes = load_results(db_path)
    out = check_writable(out_dir)
    groups, agg_notes = aggregate(runs, evals)
    notes += agg_notes
    images: dict[str, bytes] = {}
    title = f"mcel report: {Path(db_path).name}"
    all_versions = sorted({json.dumps(r.versions, sort_keys=True) for r in runs.values()})
    blocks: list[Block] = [
        ("h1", title),
        ("p", f"Database {Path(db_path).resolve()}: {len(runs)} runs, {len(evals)} evaluations, "
              f"{len(groups)} groups (dataset / model / quantization / number format / error "
              f"model). Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by mcel {__version__}."),
        ("p", "Software versions of the runs: "
              + " | ".join(_versions(json.loads(v)) for v in all_versions) + "."),
    ]
    for i, g in enumerate(groups, 1):
        blocks += _group_blocks(i, g, out, images)
    used = {r.run_id for g in groups for ln in g.lines for r in ln.runs}
    blocks.append(("h2", "Appendix: runs"))
    blocks.append(("p", "run_id is the hash of the run's full training config; a run is "
                        "reproduced by training that config."))
    app_rows = []
    for r in sorted(runs.values(), key=lambda r: (r.config.get("dataset", ""),
                                                  r.config.get("model", ""), r.method,
                                                  str(r.seed))):
        c = r.config
        app_rows.append([r.run_id, r.method, c.get("dataset", "?"), c.get("model", "?"),
                         c.get("quant", "?"), str(r.seed), str(c.get("epochs", "?")),
                         "—" if r.clean_acc is None else _pct(r.clean_acc),
                         "—" if r.train_seconds is None else f"{r.train_seconds:.1f}",
                         r.grid or "—", _versions(r.versions),
                         "yes" if r.run_id in used else "no (no evaluations)"])
    blocks.append(("table", ["run_id", "method", "dataset", "model", "quant", "seed", "epochs",
                             "clean acc %", "train s", "grid", "versions", "in report"],
                   app_rows))
    if notes:
        blocks.append(("h2", "Notes"))
        blocks += [("p", n) for n in notes]
    atomic_write_bytes(out / "report.md", _md(blocks).encode())
    atomic_write_bytes(out / "report.html", _html(blocks, images, title).encode())
    return out / "report.md"

"""The report's numbers: runs grouped by (dataset, model, quantization, number format,
error model), one `Line` per training method, each BER a `Cell` (mean over training
seeds with a 95% interval across seeds, else the run's own interval over trials), and
paired differences to CE (`delta`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from mcel.analysis import tolerable_ber
from mcel.evaluate import t_interval
from mcel.experiments.store import quant_label
from mcel.report.read import Eval, Run

CE_LABEL = "CE"


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
    images: list[int] = field(default_factory=list)  # test image counts, where recorded
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
        """Dataset / model / quantization / format, and the error model where it is not
        plain uniform flips in the weights (its ``ber`` is no title: each BER column
        sets it)."""
        head = f"{self.dataset} / {self.model} / {self.quant} / {self.fmt}"
        if uniform_spec(self.error_model):
            return head
        return f"{head} / error model {self.error_model}"

    @property
    def bers(self) -> list[float]:
        return sorted({b for ln in self.lines for b in ln.curve})

    def line(self, label: str) -> Line | None:
        return next((ln for ln in self.lines if ln.label == label), None)


def uniform_spec(spec: str) -> bool:
    """Whether a stored error-model spec is plain uniform, persistent flips in the
    weights at some BER (every field but ``ber`` at its default)."""
    from mcel.errors import MCELError
    from mcel.faults import BitErrorModel, parse_error_model

    try:
        em = parse_error_model(spec)
    except MCELError:  # a spec this version cannot read: name it
        return False
    return em.ber is not None and em == BitErrorModel(ber=em.ber)


def seed_cell(per_seed: dict[Any, float], fallback: tuple[float, float] | None = None, *,
             bounds: tuple[float, float] = (0.0, 1.0)) -> Cell:
    """A number over training seeds: the mean and its 95% t-interval across them, clipped
    to ``bounds``, where the quantity lives (an accuracy by default: with two seeds the
    interval is wide and would otherwise run past 100%). One seed has no interval across
    seeds: ``fallback`` (the run's own interval), else none."""
    vals = list(per_seed.values())
    if len(vals) >= 2:
        m, lo, hi = t_interval(vals)
        return Cell(m, max(bounds[0], lo), min(bounds[1], hi), per_seed, True)
    m = vals[0]
    lo, hi = fallback if fallback is not None else (m, m)
    return Cell(m, max(bounds[0], lo), min(bounds[1], hi), per_seed, False)


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
        key = (str(c.get("dataset", "?")), str(c.get("model", "?")), quant_label(c),
               e.fmt, e.error_model)
        by_group[key][e.run_id].append(e)
    groups = []
    for key in sorted(by_group):
        run_evals = by_group[key]
        lines = [_line(name, line_runs, run_evals, notes) for name, line_runs in
                 method_lines("/".join(key), list(run_evals), runs, notes)]
        groups.append(Group(*key, lines))
    return groups, sorted(set(notes))


def method_lines(where: str, run_ids: list[str], runs: dict[str, Run],
                 notes: list[str]) -> list[tuple[str, list[Run]]]:
    """The runs ``run_ids`` of one group as (label, runs) per training method, CE first.

    One line per method label (``runs.method``); a label whose runs differ in more than
    their seed (another grid with other epochs, say) is split and tagged with a config
    hash. Notes for ``where`` (the group) name those splits and runs sharing a seed."""
    by_label: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for rid in run_ids:
        by_label[runs[rid].method][runs[rid].variant()].append(rid)
    lines = []
    for label, variants in by_label.items():
        for variant, rids in sorted(variants.items()):
            name = label if len(variants) == 1 else f"{label} [{variant}]"
            if len(variants) > 1:
                notes.append(f"{where}: '{label}' has runs of {len(variants)} configs that "
                             f"differ in more than the seed; shown as '{label} [config hash]'")
            seen: dict[Any, str] = {}
            for r in (runs[rid] for rid in rids):
                if r.seed in seen:  # same seed, same config except data_dir/device
                    notes.append(f"'{name}': runs {seen[r.seed]} and {r.run_id} share seed "
                                 f"{r.seed}")
                seen[r.seed] = r.run_id
            lines.append((name, [runs[rid] for rid in rids]))
    lines.sort(key=lambda ln: (not ln[0].startswith(CE_LABEL + " ") and ln[0] != CE_LABEL,
                               ln[0]))
    return lines


def _line(label: str, line_runs: list[Run], run_evals: dict[str, list[Eval]],
          notes: list[str]) -> Line:
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
        curve={b: seed_cell(v, own_ci[b]) for b, v in sorted(per_ber.items())},
        clean=seed_cell(clean, None) if clean else None,
        train_seconds=sum(secs) / len(secs) if secs else None,
        margins=[m for r in line_runs for m in (r.margins or [])],
        eval_seeds=sorted(eval_seeds), trials=trials,
        images=sorted({e.images for r in line_runs for e in run_evals[r.run_id] if e.images}),
        # a BER cannot be negative: seed_cell's clip to [0, 1] fits it as well
        tolerable=seed_cell(tolerable, None) if tolerable else None,
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


def clean_cell(line: Line) -> Cell | None:
    """A method's clean accuracy: measured without faults, else its curve at BER 0."""
    return line.clean or line.curve.get(0.0)


def delta(line: Line, ce: Line, ber: float) -> Cell | None:
    """``line - CE`` at ``ber``: paired by training seed (a t-interval over the per-seed
    differences) when at least two seeds are shared, else the difference of the means."""
    a, b = line.curve.get(ber), ce.curve.get(ber)
    if a is None or b is None:
        return None
    return paired_delta(a, b)


def paired_delta(a: Cell, b: Cell) -> Cell:
    """``a - b`` of two per-seed numbers: paired by training seed (a t-interval over the
    per-seed differences) when at least two seeds are shared, else the difference of the
    means (no interval)."""
    common = [s for s in a.per_seed if s in b.per_seed]
    if len(common) >= 2:
        diffs = {s: a.per_seed[s] - b.per_seed[s] for s in common}
        m, lo, hi = t_interval(list(diffs.values()))
        return Cell(m, lo, hi, diffs, True)
    d = a.mean - b.mean
    return Cell(d, d, d, {}, False)


__all__ = ["CE_LABEL", "Cell", "Group", "Line", "aggregate", "clean_cell", "delta",
           "method_lines",
           "paired_delta", "seed_cell", "uniform_spec"]

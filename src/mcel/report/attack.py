"""Worst-case flips of a sweep's runs, per training method, with intervals over seeds.

Each run's attack result (`mcel.attack.AttackResult`, the JSON of ``mcel attack``) says,
for every accuracy level, after how many flips the test accuracy was at or below it. Runs
are grouped as the report groups them (dataset / model / quantization / number format,
here the format attacked) and, within a group, by training method
(`mcel.report.stats.method_lines`: the same labels, CE first). Per method and level:

* flips to the level: the mean over training seeds with a 95% Student-t interval across
  them (`seed_cell`, none for one seed). A run that never reached the level counts as
  the flips it made (its budget): its true count is larger, so the value is a lower
  bound (right-censored), and so is any mean that includes it (marked ``≥``);
* Δ flips vs CE: paired by training seed, a t-interval over the per-seed differences
  (`paired_delta`, as the report's Δ accuracy); a lower bound (``≥``) where a censored
  value is the method's, an upper bound (``≤``) where it is CE's, unknown (``?``) where
  both sides hold one;
* the clean test accuracy and the accuracy after the last flip, as accuracies over seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcel.attack import AttackResult
from mcel.errors import MCELError
from mcel.experiments.store import quant_label
from mcel.report.read import Run
from mcel.report.render import Block, fmt_cell, to_markdown
from mcel.report.stats import CE_LABEL, Cell, method_lines, paired_delta, seed_cell

MEASURED = ("attack_samples", "test_samples", "candidates", "seed")
UNITS = "accuracies and levels are fractions in [0, 1]; flips are counts of flipped bits"


@dataclass(frozen=True)
class FlipLine:
    """One training method of a group: ``flips[level]`` per seed (a seed that never
    reached the level counts as the flips it made; those seeds are ``censored[level]``),
    the clean accuracy and the accuracy after the last flip."""

    label: str
    runs: list[Run]
    clean: Cell
    final: Cell
    flips: dict[str, Cell]
    censored: dict[str, list[Any]]
    flips_made: dict[Any, int]

    @property
    def seeds(self) -> list[Any]:
        return sorted((r.seed for r in self.runs), key=str)


@dataclass(frozen=True)
class FlipDelta:
    """``line - CE`` in flips to one level; ``bound``: "" (a plain estimate), "≥" (a
    lower bound: censored values on the method's side), "≤" (an upper bound: on CE's),
    "?" (on both sides: no bound either way)."""

    cell: Cell
    bound: str


@dataclass(frozen=True)
class FlipGroup:
    dataset: str
    model: str
    quant: str
    fmt: str
    levels: list[str]  # as the results name them ("0.5"), highest accuracy first
    lines: list[FlipLine]
    # what the results say they measured: attack_samples, test_samples, candidates, seed
    measured: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.dataset} / {self.model} / {self.quant} / {self.fmt}"

    def line(self, label: str) -> FlipLine | None:
        return next((ln for ln in self.lines if ln.label == label), None)


@dataclass
class AttackSummary:
    groups: list[FlipGroup]
    without_result: list[str]  # runs of the database that have no result (yet)
    settings: list[dict[str, Any]]  # the distinct attack settings the results record
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The form of ``summary.json``."""
        return {"units": UNITS, "settings": self.settings, "without_result": self.without_result,
                "notes": self.notes, "groups": [_group_dict(g) for g in self.groups]}


def flips_delta(line: FlipLine, ce: FlipLine, level: str) -> FlipDelta | None:
    """``line - ce`` in flips to ``level``, paired by seed (see the module doc)."""
    a, b = line.flips.get(level), ce.flips.get(level)
    if a is None or b is None:
        return None
    d = paired_delta(a, b)
    mine = set(d.per_seed) if d.across_seeds else set(a.per_seed)
    theirs = set(d.per_seed) if d.across_seeds else set(b.per_seed)
    lower = bool(mine & set(line.censored[level]))
    upper = bool(theirs & set(ce.censored[level]))
    return FlipDelta(d, "?" if lower and upper else "≥" if lower else "≤" if upper else "")


def summarize(results: dict[str, AttackResult], runs: dict[str, Run]) -> AttackSummary:
    """The summary of attack ``results`` (by run id) of the database's ``runs`` (by run id,
    `mcel.report.read.load_runs`). Results of runs the database does not hold are left
    out with a note; results made with different settings are one MCELError line."""
    notes = [f"result {rid}: no such run in the database; left out"
             for rid in sorted(set(results) - set(runs))]
    results = {rid: r for rid, r in results.items() if rid in runs}
    if not results:
        raise MCELError("no attack result belongs to a run of the database; attack its runs "
                        "first")
    settings = _settings(results)
    by_group: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for rid in sorted(results):
        c = runs[rid].config
        by_group[(str(c.get("dataset", "?")), str(c.get("model", "?")),
                  quant_label(c), str(results[rid].meta.get("fmt", "?")))].append(rid)
    groups = []
    for key in sorted(by_group):
        rids = by_group[key]
        levels = sorted({lv for rid in rids for lv in results[rid].meta.get("flips_to", {})},
                        key=lambda lv: -float(lv))
        lines = [_flip_line(name, line_runs, results, levels)
                 for name, line_runs in method_lines(" / ".join(key), rids, runs, notes)]
        measured = {k: sorted({results[rid].meta.get(k) for rid in rids}, key=str)
                    for k in MEASURED}
        groups.append(FlipGroup(*key, levels=levels, lines=lines, measured=measured))
    return AttackSummary(groups, sorted(set(runs) - set(results)), settings,
                         sorted(set(notes)))


def _settings(results: dict[str, AttackResult]) -> list[dict[str, Any]]:
    """The settings the results record: one set of them, or one MCELError line."""
    found: list[dict[str, Any]] = []
    for r in results.values():
        s = r.meta.get("settings")
        if isinstance(s, dict) and s not in found:
            found.append(s)
    if len(found) > 1:
        from mcel.experiments.attacks import settings_diff

        raise MCELError("the attack results were made with different settings ("
                        f"{settings_diff(found[0], found[1], 'in one', 'in another')}); keep "
                        "each setting's results in a folder of its own")
    return found


def _flip_line(label: str, line_runs: list[Run], results: dict[str, AttackResult],
               levels: list[str]) -> FlipLine:
    flips: dict[str, dict[Any, float]] = {lv: {} for lv in levels}
    censored: dict[str, list[Any]] = {lv: [] for lv in levels}
    clean, final, made = {}, {}, {}
    for r in line_runs:
        res = results[r.run_id]
        clean[r.seed], final[r.seed], made[r.seed] = (res.accuracy[0], res.accuracy[-1],
                                                      len(res.flips))
        for lv, n in res.meta.get("flips_to", {}).items():
            # never reached within the flips made: count those, a lower bound
            flips[lv][r.seed] = len(res.flips) if n is None else n
            if n is None:
                censored[lv].append(r.seed)
    return FlipLine(label, line_runs, seed_cell(clean), seed_cell(final),
                    {lv: seed_cell(v, bounds=(0.0, math.inf)) for lv, v in flips.items() if v},
                    {lv: sorted(s, key=str) for lv, s in censored.items()}, made)


# -- files ------------------------------------------------------------------------------

def _cell_dict(c: Cell) -> dict[str, Any]:
    return {"mean": c.mean, "low": c.low, "high": c.high, "across_seeds": c.across_seeds,
            "per_seed": {str(s): v for s, v in c.per_seed.items()}}


def _group_dict(g: FlipGroup) -> dict[str, Any]:
    ce = g.line(CE_LABEL)
    methods = []
    for ln in g.lines:
        deltas = {}
        for lv in g.levels:
            d = flips_delta(ln, ce, lv) if ce is not None and ln is not ce else None
            if d is not None:
                deltas[lv] = {**_cell_dict(d.cell), "paired": d.cell.across_seeds,
                              "bound": {"": None, "≥": "lower", "≤": "upper",
                                        "?": "unknown"}[d.bound]}
        methods.append({
            "label": ln.label, "seeds": ln.seeds, "run_ids": [r.run_id for r in ln.runs],
            "clean_accuracy": _cell_dict(ln.clean), "final_accuracy": _cell_dict(ln.final),
            "flips_made": {str(s): n for s, n in ln.flips_made.items()},
            "flips_to": {lv: {**_cell_dict(c), "censored_seeds": ln.censored[lv],
                              "lower_bound": bool(ln.censored[lv])}
                         for lv, c in ln.flips.items()},
            "delta_vs_ce": deltas if ce is not None and ln is not ce else None})
    return {"dataset": g.dataset, "model": g.model, "quant": g.quant, "fmt": g.fmt,
            "title": g.title, "levels": g.levels, "measured": g.measured, "methods": methods}


def fmt_flips(c: Cell | None, mark: str = "") -> str:
    """Flips: ``mean [low, high]`` (one decimal), a single seed's count alone; ``mark``
    (``≥``) before a lower bound."""
    if c is None:
        return "—"
    head = f"{mark} " if mark else ""
    if not c.across_seeds:
        return f"{head}{c.mean:g}"
    return f"{head}{c.mean:.1f} [{c.low:.1f}, {c.high:.1f}]"


def fmt_flips_delta(d: FlipDelta | None) -> str:
    if d is None:
        return "—"
    c, head = d.cell, f"{d.bound} " if d.bound else ""
    if not c.across_seeds:
        return f"{head}{c.mean:+.1f}"
    return f"{head}{c.mean:+.1f} [{c.low:+.1f}, {c.high:+.1f}]"


def _level_text(lv: str) -> str:
    return f"{100 * float(lv):g}%"


def _per_seed(ln: FlipLine, levels: list[str]) -> str:
    """``seed: n / n``, ``>N`` where the seed never reached the level in its N flips."""
    parts = []
    for s in ln.seeds:
        counts = []
        for lv in levels:
            c = ln.flips.get(lv)
            if c is None or s not in c.per_seed:
                counts.append("—")
            elif s in ln.censored[lv]:
                counts.append(f">{ln.flips_made[s]}")
            else:
                counts.append(f"{c.per_seed[s]:g}")
        parts.append(f"{s}: {' / '.join(counts)}")
    return "; ".join(parts)


def group_table(g: FlipGroup) -> Block:
    """One group's table: a row per method."""
    ce = g.line(CE_LABEL)
    made = {n for ln in g.lines for n in ln.flips_made.values()}
    final = f"acc. after {made.pop()} flips %" if len(made) == 1 else "acc. after last flip %"
    header = (["method", "seeds", "clean acc %"]
              + [f"flips to {_level_text(lv)}" for lv in g.levels] + [final]
              + [f"Δ flips vs CE @ {_level_text(lv)}" for lv in g.levels]
              + ["per seed: flips to " + " / ".join(_level_text(lv) for lv in g.levels)])
    rows = []
    for ln in g.lines:
        other = ce is not None and ln is not ce
        rows.append([ln.label, ", ".join(map(str, ln.seeds)), fmt_cell(ln.clean)]
                    + [fmt_flips(ln.flips.get(lv), "≥" if ln.censored[lv] else "")
                       for lv in g.levels] + [fmt_cell(ln.final)]
                    + [fmt_flips_delta(flips_delta(ln, ce, lv)) if other else "—"
                       for lv in g.levels] + [_per_seed(ln, g.levels)])
    return ("table", header, rows)


NOTE = ("Flips to a level: the fewest flips after which test accuracy is at or below it; "
        "mean over training seeds [95% t-interval across seeds] (a single seed: its count). "
        "A seed that never reached a level within its flips counts as the flips it made "
        "(the budget; shown as >N per seed): its true count is larger, so a mean marked ≥ "
        "is a lower bound, and its interval is that of the counted values. Δ vs CE: paired "
        "by training seed (t-interval over the per-seed differences) when at least two seeds "
        "are shared with CE, else the difference of the means; ≥ a lower bound (the method "
        "had censored seeds), ≤ an upper bound (CE had), ? both (no bound). Accuracies in "
        "percent: mean over seeds [95% t-interval across seeds, clipped to [0, 100]].")


def settings_text(st: dict[str, Any]) -> str:
    """The attack settings a result records (`mcel.attack.AttackSettings`), in words."""
    levels, fmt = st.get("levels"), st.get("fmt") or "each run's own"
    return (f"Attack settings: budget {st.get('budget')} flips, {st.get('candidates')} "
            f"candidate bits per layer and flip, layers {','.join(st.get('layers') or ['*'])}, "
            f"format {fmt}, attack batch of "
            f"{st.get('attack_samples')} training images drawn with seed {st.get('seed')}, "
            f"the first {st.get('test_samples')} test images, levels "
            + (",".join(f"{v:g}" for v in levels) if levels else "0.5 and 1.1x chance")
            + (", stopping at the lowest level" if st.get("stop") else "") + ".")


def _measured(g: FlipGroup) -> str:
    def v(key: str) -> str:
        return "/".join(map(str, g.measured.get(key, []))) or "?"

    return (f"Measured: attack batch of {v('attack_samples')} training images (seed "
            f"{v('seed')}), accuracy on {v('test_samples')} test images, {v('candidates')} "
            "candidate bits per layer and flip")


def summary_blocks(s: AttackSummary, title: str) -> list[Block]:
    """The Markdown of ``summary.md``: a heading, the settings, one table per group,
    where each number comes from, and the runs without a result."""
    blocks: list[Block] = [("h1", title)]
    blocks += [("p", settings_text(st)) for st in s.settings]
    for i, g in enumerate(s.groups, 1):
        provenance = "; ".join(f"{ln.label}: runs {', '.join(r.run_id for r in ln.runs)}"
                               for ln in g.lines)
        blocks += [("h2", f"{i}. {g.title}"), group_table(g),
                   ("p", f"{_measured(g)}. Runs: {provenance}.")]
    blocks.append(("p", NOTE))
    if s.without_result:
        blocks.append(("p", f"{len(s.without_result)} run(s) of the database have no attack "
                            f"result here and are not counted: {', '.join(s.without_result)}."))
    if s.notes:
        blocks += [("h2", "Notes")] + [("p", n) for n in s.notes]
    return blocks


def write_summary(s: AttackSummary, out_dir: str | Path, title: str) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.json`` in ``out_dir``, each written atomically."""
    from mcel.io import atomic_write_bytes, write_json

    out = Path(out_dir)
    atomic_write_bytes(out / "summary.md", to_markdown(summary_blocks(s, title)).encode())
    write_json(out / "summary.json", s.to_dict())
    return out / "summary.md", out / "summary.json"


def summarize_folder(db_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Summarize the attack results in ``out_dir`` (``<run_id>.json``) of the runs of the
    database ``db_path`` into ``out_dir/summary.md`` and ``summary.json``."""
    from mcel.experiments.attacks import read_results
    from mcel.report.read import load_runs

    runs, notes = load_runs(db_path)
    results = read_results(out_dir, runs)
    if not results:
        raise MCELError(f"{out_dir} holds no attack result of a run of {db_path}; attack "
                        "them first (without --summary-only)")
    s = summarize(results, runs)
    s.notes = sorted(set(s.notes + notes))
    return write_summary(s, out_dir, f"mcel attack: worst-case flips of {Path(db_path).name}")


__all__ = ["AttackSummary", "FlipDelta", "FlipGroup", "FlipLine", "flips_delta", "fmt_flips",
           "fmt_flips_delta", "group_table", "summarize", "summarize_folder",
           "summary_blocks", "write_summary"]

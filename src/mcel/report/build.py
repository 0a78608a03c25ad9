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

import json
import time
from collections.abc import Sequence
from pathlib import Path

from mcel.errors import MCELError
from mcel.experiments.store import quant_label
from mcel.registry import did_you_mean

# the report's parts, importable from here as before
from mcel.report.read import Eval, Run, load_results
from mcel.report.render import (
    Block,
    best_mcel,
    energy_blocks,
    fmt_cell,
    fmt_delta,
    fmt_tolerable,
    group_blocks,
    pct,
    to_html,
    to_markdown,
    versions_text,
)
from mcel.report.stats import CE_LABEL, Cell, Group, Line, aggregate, delta
from mcel.report.summary import summary_rows, write_summary


def build_report(db_path: str | Path | Sequence[str | Path], out_dir: str | Path, *,
                 voltage_curve: str | Path | None = None, baseline: str | None = None,
                 grid: str | Path | Sequence[str | Path] | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and the PNGs for the study in ``db_path``
    (one database, or several read as one study: sister grids whose runs pair by seed)
    into ``out_dir``; returns the path of ``report.md``. With ``voltage_curve`` (a
    ``voltage,ber`` CSV, `mcel.energy`) it adds each method's lowest safe voltage and
    energy saving. The Δ columns compare every method with ``baseline`` (None: CE where
    there is one; else a method label as the tables name it, e.g. ``CE+clip(0.025)``:
    does MCEL add to the clip?). With ``grid`` (one grid file or several) only the runs
    of the grids' current cells are reported: a database keeps the runs of cells a grid
    has since dropped or changed, which the report then names in a note.

    Raises :class:`MCELError` (one line) for a missing, empty or foreign database, or a
    baseline that no group holds.
    """
    from mcel.energy import read_voltage_curve
    from mcel.io import atomic_write_bytes, check_writable

    curve = read_voltage_curve(voltage_curve) if voltage_curve is not None else None
    runs, evals, notes = load_results(db_path)
    if grid is not None:
        runs, evals, dropped = _grid_runs(grid, runs, evals)
        notes += dropped
    groups, agg_notes = aggregate(runs, evals)
    if baseline is not None:  # before the out folder exists
        _check_baseline(baseline, groups)
    out = check_writable(out_dir)
    notes += agg_notes
    images: dict[str, bytes] = {}
    paths = [db_path] if isinstance(db_path, (str, Path)) else list(db_path)
    title = "mcel report: " + " + ".join(Path(p).name for p in paths)
    blocks: list[Block] = [("h1", title),
                           *_header(paths, out, runs, n_evals=len(evals), n_groups=len(groups))]
    for i, g in enumerate(groups, 1):
        blocks += group_blocks(i, g, out, images, baseline=baseline or CE_LABEL)
    if curve is not None:
        blocks += energy_blocks(groups, curve, out, images)
    blocks += _appendix(runs, groups)
    if notes:
        blocks.append(("h2", "Notes"))
        blocks += [("p", n) for n in notes]
    write_summary(out, summary_rows(groups, baseline or CE_LABEL))
    atomic_write_bytes(out / "report.md", to_markdown(blocks).encode())
    atomic_write_bytes(out / "report.html", to_html(blocks, images, title).encode())
    return out / "report.md"


def _appendix(runs: dict[str, Run], groups: list[Group]) -> list[Block]:
    """The appendix: every run of the study, and whether the report shows it."""
    blocks: list[Block] = []
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
                         quant_label(c), str(r.seed), str(c.get("epochs", "?")),
                         "—" if r.clean_acc is None else pct(r.clean_acc),
                         "—" if r.train_seconds is None else f"{r.train_seconds:.1f}",
                         r.grid or "—", versions_text(r.versions),
                         "yes" if r.run_id in used else "no (no evaluations)"])
    blocks.append(("table", ["run_id", "method", "dataset", "model", "quant", "seed", "epochs",
                             "clean acc %", "train s", "grid", "versions", "in report"],
                   app_rows))
    return blocks


def _grid_runs(grid, runs: dict[str, Run], evals: list) -> tuple[dict[str, Run], list, list]:
    """The runs (and their evals) of the grids' cells, and a note naming the others."""
    from mcel.experiments.grid import expand, load_grid

    grids = [grid] if isinstance(grid, (str, Path)) else list(grid)
    ids = {c.run_id for g in grids for c in expand(load_grid(g))}
    left = sorted(set(runs) - ids)
    notes = []
    if left:
        shown = ", ".join(f"{runs[r].method} seed {runs[r].seed} ({r})" for r in left[:8])
        notes.append(f"Left out: {len(left)} run(s) of the database that are not cells of "
                     f"{', '.join(Path(g).name for g in grids)} as it is now (cells since "
                     f"dropped or changed): {shown}{' ...' if len(left) > 8 else ''}.")
    return ({k: v for k, v in runs.items() if k in ids},
            [e for e in evals if e.run_id in ids], notes)


def _check_baseline(baseline: str, groups: list[Group]) -> None:
    methods = sorted({ln.label for g in groups for ln in g.lines})
    if baseline not in methods:
        raise MCELError(f"no method '{baseline}' in this study{did_you_mean(baseline, methods)}; "
                        f"the methods: {', '.join(methods)}")


def _header(paths: list, out: Path, runs: dict[str, Run], *, n_evals: int,
            n_groups: int) -> list[Block]:
    """What the study holds, where it comes from and which software ran it."""
    from mcel import __version__

    all_versions = sorted({json.dumps(r.versions, sort_keys=True) for r in runs.values()})
    return [
        ("p", f"{'Database' if len(paths) == 1 else 'Databases'} "
              f"{', '.join(_relative(p, out) for p in paths)}: {len(runs)} runs, "
              f"{n_evals} evaluations, {n_groups} groups (dataset / model / quantization / "
              f"number format / error model). Generated "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')} by mcel {__version__}."),
        ("p", "Software versions of the runs: "
              + " | ".join(versions_text(json.loads(v)) for v in all_versions) + "."),
    ]


def _relative(db_path: str | Path, out: Path) -> str:
    """The database's path as seen from the report's folder: the report moves with the
    study folder and names no machine's absolute paths."""
    import os

    return os.path.relpath(Path(db_path).resolve(), out.resolve())


__all__ = ["CE_LABEL", "Cell", "Eval", "Group", "Line", "Run", "aggregate", "best_mcel",
           "build_report", "delta", "fmt_cell", "fmt_delta", "fmt_tolerable", "load_results"]

"""Run a sweep grid into a results database, resumably and in parallel.

``run_sweep(grid, out)`` trains every cell of the grid (``out/runs/<run_id>/``, which
`mcel.train.train` resumes by itself after a kill), measures its clean output margins
on the test set and evaluates it in every number format of the plan. Each (run,
format) is written to SQLite in one transaction (the runs row, its evals rows and all
their trials rows), so a sweep killed at any moment leaves whole results or none, and
rerunning the same command does only what is missing.

A cell that raises does not stop the sweep: it is logged in one line, its traceback goes
to ``out/runs/<run_id>/error.txt``, nothing of it enters the database, and the other
cells go on; the summary lists it in ``failed``, and a rerun retries exactly the failed
cells (a later success removes the stale ``error.txt``).

Cells (`mcel.experiments.cell`) run through an *executor backend*
(`mcel.experiments.backends`: ``local`` processes or ``ray`` tasks). Only the parent
process writes to the database; backends return plain `CellResult` records.

On CPU, PyTorch's float reductions depend on the number of threads, so every cell
runs with a fixed thread count (``threads``, default 1): the numbers are the same
whatever ``jobs`` is and whichever backend ran the cell.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcel.errors import MCELError
from mcel.experiments import store
from mcel.experiments.backends import (
    EXECUTORS,
    Executor,
    list_backends,
    local_executor,
    prepare_backend,
)
from mcel.experiments.cell import CellFailure, CellJob, CellResult, run_cell
from mcel.experiments.grid import Cell, Grid, expand, load_grid, select
from mcel.experiments.store import (
    connect,
    dumps,
    method_label,
    settle,
    transaction,
    versions,
)
from mcel.io import check_writable

ERROR_FILE = "error.txt"  # in a failed cell's run folder: what failed, and the traceback


@dataclass
class SweepSummary:
    grid: str
    db: str
    out: str
    cells: int = 0
    done: int = 0  # cells trained/evaluated in this call
    failed: list[CellFailure] = field(default_factory=list)  # cells that raised in this call
    skipped: int = 0  # cells already complete in the database
    runs_written: int = 0
    evals_written: int = 0
    trials_written: int = 0
    seconds: float = 0.0
    run_ids: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # labels of the cells still to run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the database side -----------------------------------------------------------------

def missing_fmts(con: sqlite3.Connection, cell: Cell) -> tuple[str, ...]:
    """Formats of ``cell`` with at least one evals row not yet in the database."""
    has_run, keys = store.eval_keys(con, cell.run_id)
    need = [k for k in cell.plan.keys() if k not in keys]
    if has_run and not need:
        return ()
    fmts = tuple(dict.fromkeys(k[0] for k in need))
    return fmts or cell.plan.fmts[:1]  # runs row missing: one format brings it


@dataclass
class Written:
    """Rows a cell added to the database."""

    runs: int = 0
    evals: int = 0
    trials: int = 0


def write_result(con: sqlite3.Connection, result: CellResult, grid_name: str) -> Written:
    """Write one cell's result: one transaction per format. Returns the rows written."""
    written = Written()
    run = {"run_id": result.run_id, "grid": grid_name, "method": method_label(result.config),
           "config": dumps(result.config), "clean_acc": result.clean_acc,
           "train_seconds": result.train_seconds, "margins": json.dumps(result.margins),
           "versions": dumps({**versions(), "torch_threads": result.threads})}
    for fmt in result.fmts:
        with transaction(con):
            written.runs += store.add_run(con, run)
            for ev in (e for e in result.evals if e["fmt"] == fmt):
                if store.add_eval(con, result.run_id, ev) is not None:
                    written.evals += 1
                    written.trials += len(ev["accuracies"])
    return written


# -- the sweep ---------------------------------------------------------------------------

def db_path(grid: Grid, grid_path: Path, out_dir: Path) -> Path:
    """``db:`` of the grid (relative to the out folder), else ``<grid stem>.db`` there."""
    db = Path(grid.db) if grid.db else Path(f"{grid_path.stem}.db")
    return db if db.is_absolute() else out_dir / db


def _check_data(cells: Sequence[Cell]) -> None:
    """Find and read every dataset before creating anything: a missing, truncated or
    foreign file fails in one line, not in a worker after the database exists."""
    from mcel.data import DATASETS, is_own, load_arrays

    for name, data_dir in dict.fromkeys((c.config.dataset, c.config.data_dir) for c in cells):
        if is_own(name) or not DATASETS.get(name).embedded:
            for split in ("train", "test"):
                load_arrays(name, split, data_dir)


def _check_counts(**counts: Any) -> None:
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise MCELError(f"{name} must be a positive integer, got {n!r}")


def run_sweep(
    grid_path: str | Path,
    out_dir: str | Path,
    jobs: int = 1,
    *,
    backend: str = "local",
    backend_options: dict[str, Any] | None = None,
    data_dir: str | None = None,
    threads: int = 1,
    dry_run: bool = False,
    only: Sequence[str] = (),
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Run every cell of the grid file that is not complete in its database.

    ``out_dir`` receives ``runs/<run_id>/`` folders and (by default) the database.
    ``jobs`` cells run at once through ``backend`` (``backend_options``, e.g. Ray's
    ``address``, go to it); ``data_dir`` overrides the grid's data folder; ``threads`` is
    each cell's torch thread count (see module doc); ``dry_run`` only counts what would
    run; ``only`` (``KEY=PATTERN``, `grid.select`) runs a part into the same database.
    Returns the counts of cells done/skipped and rows written, and the cells that raised
    (``failed``: `CellFailure`, traceback also in ``out/runs/<run_id>/error.txt``); a
    failed cell does not stop the others and writes nothing to the database. Mistakes
    in the grid or the options raise `MCELError` before any cell runs."""
    t0 = time.perf_counter()
    _check_counts(jobs=jobs, threads=threads)
    options = {k: v for k, v in (backend_options or {}).items() if v is not None}
    executor = prepare_backend(backend, options)
    grid_path = Path(grid_path)
    grid = load_grid(grid_path)
    cells = select(expand(grid, data_dir=data_dir), only)
    if not dry_run:
        _check_data(cells)
    out = Path(out_dir) if dry_run else check_writable(out_dir)
    db = db_path(grid, grid_path, out)
    summary = SweepSummary(grid=grid.name, db=str(db), out=str(out), cells=len(cells),
                           run_ids=[c.run_id for c in cells],
                           pending=[c.label for c in cells])
    if dry_run and not db.exists():  # a dry run creates nothing
        summary.seconds = time.perf_counter() - t0
        return summary
    con = store.open_readonly(db) if dry_run else connect(db)  # a dry run changes nothing
    try:
        todo = _jobs(con, cells, out, threads)
        summary.skipped = len(cells) - len(todo)
        summary.pending = [j.cell.label for j in todo]
        _warn_stale(con, cells, log)
        if log:
            log(f"sweep {grid.name}: {len(cells)} cells, {summary.skipped} already done, "
                f"{len(todo)} to run ({backend}, jobs={jobs}); database {db}")
        if not dry_run and todo:
            _run_jobs(con, executor(todo, jobs, **options), todo, grid_name=grid.name,
                      summary=summary, progress=progress, log=log)
    finally:
        settle(con)
        con.close()
        summary.seconds = time.perf_counter() - t0
    return summary


def _jobs(con: sqlite3.Connection, cells: Sequence[Cell], out: Path,
          threads: int) -> list[CellJob]:
    """A job for every cell with formats still missing in the database."""
    todo = []
    for cell in cells:
        fmts = missing_fmts(con, cell)
        if fmts:
            todo.append(CellJob(cell, str(out / "runs" / cell.run_id), fmts, threads))
    return todo


def _off_plan(cell: Cell, plan: str | None, trials: int) -> bool:
    """Whether an evals row of ``cell`` was made under another eval plan than the grid's:
    its recorded plan differs, or (rows from before plans were recorded) its trial count
    differs from a fixed one."""
    if plan is not None:
        return plan != dumps(cell.plan.settings())
    return cell.plan.target_half_width is None and trials != cell.plan.trials


def _warn_stale(con: sqlite3.Connection, cells: Sequence[Cell],
                log: Callable[[str], None] | None) -> None:
    """Finished evaluations are never redone: say where they differ from the grid."""
    stale = [c for c in cells
             if any(_off_plan(c, p, t) for p, t in store.eval_plans(con, c.run_id))]
    if stale and log:
        log(f"warning: {len(stale)} cell(s) hold evaluations made under another eval plan "
            f"(trial count, adaptive, min_trials or limit_test) than the grid's "
            f"{dumps(stale[0].plan.settings())}; they are kept as they are (write to a new "
            "--out to recompute them)")


def _run_jobs(con: sqlite3.Connection, results: Iterator[CellResult | CellFailure],
              todo: list[CellJob], *, grid_name: str, summary: SweepSummary, progress: bool,
              log: Callable[[str], None] | None) -> None:
    """Store each result as it comes, and record each failure, counting into ``summary``."""
    from mcel.console import progress as progress_bar

    by_id = {j.cell.run_id: j for j in todo}
    with progress_bar(progress) as bar:
        task = bar.add_task(f"sweep {grid_name}", total=len(todo), info="")
        for result in results:
            job = by_id[result.run_id]
            if isinstance(result, CellFailure):
                line = _record_failure(result, job, summary)
            else:
                line = _record_result(con, result, job=job, grid_name=grid_name,
                                      summary=summary)
            bar.update(task, advance=1, info=job.cell.label)
            if log:
                n = summary.done + len(summary.failed)
                log(f"[{n}/{len(todo)}] {job.cell.label}: {line}")


def _record_result(con: sqlite3.Connection, result: CellResult, *, job: CellJob,
                   grid_name: str, summary: SweepSummary) -> str:
    """Write a finished cell; returns its progress line."""
    written = write_result(con, result, grid_name)
    summary.done += 1
    summary.runs_written += written.runs
    summary.evals_written += written.evals
    summary.trials_written += written.trials
    (Path(job.run_dir) / ERROR_FILE).unlink(missing_ok=True)  # an earlier try's, now stale
    return f"clean {result.clean_acc:.4f}, {written.evals} evals ({result.seconds:.1f}s)"


def _record_failure(failure: CellFailure, job: CellJob, summary: SweepSummary) -> str:
    """Keep a failed cell's traceback in its run folder; returns its progress line."""
    from mcel.io import atomic_write_bytes

    summary.failed.append(failure)
    path = Path(job.run_dir) / ERROR_FILE
    text = (f"cell {failure.label} (run {failure.run_id}) failed after "
            f"{failure.seconds:.1f}s: {failure.error}\n\nconfig: "
            f"{dumps(job.cell.config.to_dict())}\n\n{failure.traceback}")
    try:
        atomic_write_bytes(path, text.encode())
        where = f"traceback in {path}"
    except MCELError as e:  # a full disk must not end the sweep either
        where = f"traceback not saved: {e}"
    return f"FAILED ({failure.error}); {where}"


def audit(grid_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Check that a finished sweep's database is complete and consistent.

    Every cell of the grid has its runs row and run folder, every (format, error model,
    BER, eval seed) of its plan one evals row, every evals row exactly ``trials``
    trials rows numbered 0..trials-1, nothing is duplicated or orphaned, and at BER 0
    the mean equals the clean accuracy with no flipped bit. Returns the row counts and
    a list of ``problems`` (empty when all is well).
    """
    grid_path, out_dir = Path(grid_path), Path(out_dir)
    grid = load_grid(grid_path)
    cells = expand(grid)
    db = db_path(grid, grid_path, out_dir)
    if not db.exists():
        raise MCELError(f"{db} does not exist; run the sweep first")
    con = connect(db)
    try:
        runs, evals = store.run_ids(con), store.evals(con)
        want = {c.run_id: c for c in cells}
        problems = (_run_problems(runs, want, out_dir) + _eval_problems(evals, want)
                    + _trial_problems(evals, store.trial_groups(con), runs))
        n_trials = store.count(con, "trials")
    finally:
        con.close()
    return {"cells": len(cells), "runs": len(runs), "evals": len(evals), "trials": n_trials,
            "expected_evals": sum(len(c.plan.keys()) for c in cells),
            "expected_trials": sum(len(c.plan.keys()) * c.plan.trials for c in cells
                                   if c.plan.target_half_width is None) or None,
            "problems": problems}


def _run_problems(runs: set[str], want: dict[str, Cell], out_dir: Path) -> list[str]:
    problems = [f"run {run_id}: no runs row" for run_id in sorted(set(want) - runs)]
    for run_id in sorted(runs & set(want)):
        if not (out_dir / "runs" / run_id / "model.safetensors").exists():
            problems.append(f"run {run_id}: no run folder")
    return problems


def _eval_problems(evals: list, want: dict[str, Cell]) -> list[str]:
    """Duplicated or missing evals rows, and rows of another trial count than the grid's."""
    have: dict[tuple, int] = {}
    for e in evals:
        key = (e["run_id"], e["fmt"], e["error_model"], e["ber"], e["eval_seed"])
        have[key] = have.get(key, 0) + 1
    problems = [f"evals {k}: {n} rows" for k, n in have.items() if n > 1]
    for run_id, cell in want.items():
        for key in cell.plan.keys():
            if (run_id, *key) not in have:
                problems.append(f"run {run_id}: no evals row for {key}")
    stale = sorted({e["run_id"] for e in evals if e["run_id"] in want
                    and _off_plan(want[e["run_id"]], e["plan"], e["trials"])})
    problems += [f"run {r}: evals rows made under another eval plan than the grid's "
                 f"{dumps(want[r].plan.settings())} (the grid changed after they were "
                 "written)" for r in stale]
    return problems


def _trial_problems(evals: list, trials: dict, runs: set[str]) -> list[str]:
    """Orphans, trial rows that do not number 0..trials-1, and BER 0 rows that flipped a
    bit or differ from the clean accuracy."""
    problems = []
    for e in evals:
        t = trials.get(e["eval_id"])
        if e["run_id"] not in runs:
            problems.append(f"eval {e['eval_id']}: orphan (no runs row)")
        if t is None or (t["n"], t["lo"], t["hi"]) != (e["trials"], 0, e["trials"] - 1):
            problems.append(f"eval {e['eval_id']}: {0 if t is None else t['n']} trials rows, "
                            f"evals row says {e['trials']}")
        elif e["ber"] == 0 and (t["flipped"] or abs(e["mean"] - e["clean_acc"]) > 1e-12):
            problems.append(f"eval {e['eval_id']}: BER 0 differs from clean accuracy")
    orphans = set(trials) - {e["eval_id"] for e in evals}
    if orphans:
        problems.append(f"{len(orphans)} trials groups without an evals row")
    return problems


__all__: Sequence[str] = [
    "CellFailure", "CellJob", "CellResult", "ERROR_FILE", "EXECUTORS", "Executor",
    "SweepSummary", "Written", "audit",
    "local_executor", "list_backends", "missing_fmts", "run_cell", "run_sweep", "write_result",
]

"""``mcel sweep``: run a grid file into a results database (resumable, parallel).

Exits 0 when every cell ran, `EXIT_CELLS_FAILED` (3) when some cell raised (the others
ran and are stored; a rerun retries only the failed ones), 2 for a user mistake found
before any cell runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mcel.cli.common import listed, positive_int
from mcel.console import log

EXIT_CELLS_FAILED = 3  # some cells raised; the others are in the database

def register(sub: Any) -> None:
    """Register ``mcel sweep`` on the subparsers of the ``mcel`` parser."""
    from mcel.experiments.backends import list_backends

    p = sub.add_parser(
        "sweep", help="train and evaluate every cell of a grid file into a results database",
        description="Train and evaluate every cell of a grid YAML file. Rerunning the same "
                    "command resumes: finished cells are skipped, interrupted ones continue. "
                    "A cell that fails is logged (traceback in its runs/<run_id>/error.txt) "
                    "and the others go on; the exit code is then 3, and a rerun retries "
                    "only the failed cells.")
    p.add_argument("grid", metavar="GRID.yaml", help="grid file (see mcel.experiments.grid)")
    p.add_argument("--out", default=None,
                   help="folder for runs/ and the database (default: sweep-<grid name>)")
    p.add_argument("--jobs", type=positive_int, default=1, help="cells run at once")
    p.add_argument("--data-dir", default=None, help="dataset folder for every cell "
                   "(overrides the grid's data_dir; not part of the run id) (default: the "
                   "grid's)")
    p.add_argument("--backend", default="local", metavar=listed(list_backends()),
                   help="where cells run: local (this machine, --jobs processes) or ray "
                        "(Ray tasks; pip install 'mcel[ray]')")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. 'auto' or 'HOST:6379' (--backend ray; "
                        "default: $RAY_ADDRESS, else a private Ray instance on this machine)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads per cell; results depend on it on CPU (default 1)")
    p.add_argument("--only", action="append", default=None, metavar="KEY=PATTERN",
                   help="run only the matching cells, into the grid's database: KEY is "
                        "method (e.g. 'MCEL(m=30)', 'CE*') or a training field (seed=2); "
                        "repeat it: the same key gives alternatives, different keys must "
                        "all match (default: every cell)")
    p.add_argument("--dry-run", action="store_true", help="only list what would run")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mcel.experiments.grid import load_grid
    from mcel.experiments.sweep import run_sweep

    out = args.out
    if out is None:
        out = f"sweep-{load_grid(args.grid).name}"
    s = run_sweep(args.grid, Path(out), args.jobs, backend=args.backend,
                  backend_options={"address": args.address},
                  data_dir=args.data_dir, threads=args.threads, dry_run=args.dry_run,
                  only=args.only or (), progress=sys.stderr.isatty(), log=log)
    if args.dry_run:
        for label in s.pending:
            print(f"to run: {label}")
        print(f"{s.cells} cells: {s.skipped} complete, {s.cells - s.skipped} to run; "
              f"database {s.db}")
        return 0
    print_table(s)
    failed = f", {len(s.failed)} failed" if s.failed else ""
    print(f"{s.cells} cells: {s.done} run{failed}, {s.skipped} already complete; wrote "
          f"{s.runs_written} runs, {s.evals_written} evals, {s.trials_written} trials "
          f"rows to {s.db} ({s.seconds:.1f}s)")
    if s.failed:
        print(f"mcel sweep: error: {failure_line(s)}", file=sys.stderr)
        return EXIT_CELLS_FAILED
    return 0


def failure_line(s, named: int = 3) -> str:
    """"N of M cells failed: ..." naming the first ``named`` cells and their errors."""
    from pathlib import Path

    from mcel.experiments.sweep import ERROR_FILE

    n, ran = len(s.failed), s.done + len(s.failed)
    listed = "; ".join(f"{f.label} ({f.error})" for f in s.failed[:named])
    more = f"; and {n - named} more" if n > named else ""
    runs = Path(s.out) / "runs"
    where = (f"traceback in {runs / s.failed[0].run_id / ERROR_FILE}" if n == 1
             else f"tracebacks in {runs}/<run_id>/{ERROR_FILE}")
    return (f"{n} of {ran} cells failed: {listed}{more}; {where}; fix the cause and rerun "
            "the same command to retry only these")


def print_table(s) -> None:
    """Mean accuracy per (model, quant, method, format, error model) and BER, over the runs
    (seeds and any other axis) of each group; the report separates them properly."""
    from rich.console import Console
    from rich.table import Table

    from mcel.experiments.store import connect, mean_accuracy, settle

    if not s.run_ids:
        return
    con = connect(s.db)
    try:
        rows = mean_accuracy(con, s.run_ids)
    finally:
        settle(con)  # connect() turned WAL on again: leave one plain file
        con.close()
    if not rows:
        return
    bers = sorted({r["ber"] for r in rows})
    # Columns that are the same in every row go to the title: the table stays narrow.
    names = {"model": "model", "quant": "quant", "method": "method", "fmt": "fmt",
             "error_model": "error model"}
    varying = [k for k in names if len({r[k] for r in rows}) > 1] or ["method"]
    fixed = ", ".join(f"{rows[0][k]}" for k in names if k not in varying)
    # "runs": seeds, and any other grid axis not shown as a column, pooled
    table = Table(title=f"{s.grid}: mean accuracy over runs, %"
                  + (f" ({fixed})" if fixed else ""))
    for k in varying:
        table.add_column(names[k])
    table.add_column("runs", justify="right")
    for b in bers:
        table.add_column(f"BER {b:g}", justify="right")
    groups: dict[tuple, dict[float, Any]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in varying), {})[r["ber"]] = r
    for key, by_ber in groups.items():
        n = max(r["n"] for r in by_ber.values())
        cells = [f"{100 * by_ber[b]['acc']:.2f}" if b in by_ber else "" for b in bers]
        table.add_row(*map(str, key), str(n), *cells)
    Console().print(table)

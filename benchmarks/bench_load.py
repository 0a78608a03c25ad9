"""Benchmark: a sweep of many small cells under load, checked for complete results.

A generated grid of ``--cells`` cells (default 200: 2 methods x 2 quantizations x 50
seeds; digits, mlp hidden=16, 1 epoch on 200 samples, 100 test samples, BERs 0 and
0.02, 3 trials each) is run by the real command, ``mcel sweep GRID --jobs 2`` (local
backend, a pool of 2 spawned processes), then:

* audited (`mcel.experiments.sweep.audit`): one runs row and run folder per cell, every
  evals row of every plan exactly once, each with all its trials rows numbered 0..n-1,
  no orphans, BER 0 equal to the clean accuracy;
* rerun: every cell is found complete, nothing is written, the database is unchanged.

Records the wall time of both runs (and cells per second) into ``docs/bench/load.json``.

    .venv/bin/python benchmarks/bench_load.py [--cells 200] [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import REPO, command_line, machine_info, write_json

from mcel.experiments.sweep import audit

GRID = """\
name: load
base: {{dataset: digits, model: mlp, model_kwargs: {{hidden: 16}}, epochs: 1, lr: 0.01,
       batch_size: 64, limit_train: 200, limit_test: 100}}
grid:
  method: [{{loss: ce}}, {{loss: mcel, margin: 2}}]
  quant: [int4, int8]
  seed: [{seeds}]
eval: {{bers: [0, 0.02], trials: 3, seed: 0}}
"""
PER_SEED = 4  # cells per seed: 2 methods x 2 quantizations


def grid_text(cells: int) -> str:
    seeds = max(1, -(-cells // PER_SEED))
    return GRID.format(seeds=", ".join(map(str, range(seeds))))


def _db_digest(db: Path) -> str:
    """Hash of every row that holds a result (not timings), to compare two states."""
    import sqlite3

    con = sqlite3.connect(db)
    rows = [con.execute("SELECT run_id, config, clean_acc, margins FROM runs ORDER BY run_id")
            .fetchall(),
            con.execute("SELECT run_id, fmt, error_model, ber, eval_seed, mean, std, ci_low, "
                        "ci_high, trials FROM evals ORDER BY run_id, fmt, error_model, ber")
            .fetchall(),
            con.execute("SELECT e.run_id, e.fmt, e.ber, t.trial, t.accuracy, t.empirical_rate "
                        "FROM trials t JOIN evals e USING (eval_id) "
                        "ORDER BY e.run_id, e.fmt, e.ber, t.trial").fetchall()]
    con.close()
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def _sweep(grid: Path, out: Path, jobs: int) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "mcel.cli", "sweep", str(grid), "--out", str(out),
           "--jobs", str(jobs)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"sweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds, r.stdout.strip().splitlines()[-1]


def run(cells: int, jobs: int, workdir: Path) -> dict[str, Any]:
    grid = workdir / "load.yaml"
    grid.write_text(grid_text(cells))
    out = workdir / "out"
    first_s, first_line = _sweep(grid, out, jobs)
    a = audit(grid, out)
    digest = _db_digest(out / "load.db")
    again_s, again_line = _sweep(grid, out, jobs)
    ok = (not a["problems"] and a["runs"] == a["cells"] and a["evals"] == a["expected_evals"]
          and a["trials"] == a["expected_trials"] and _db_digest(out / "load.db") == digest
          and f"0 run, {a['cells']} already complete" in again_line)
    return {
        "benchmark": "load",
        "title": f"Sweep of {a['cells']} small cells, local backend, --jobs {jobs}",
        "machine": machine_info("cpu"),
        "grid": grid.read_text(),
        "cells": a["cells"], "jobs": jobs,
        "rows": {"runs": a["runs"], "evals": a["evals"], "trials": a["trials"]},
        "expected_rows": {"runs": a["cells"], "evals": a["expected_evals"],
                          "trials": a["expected_trials"]},
        "problems": a["problems"][:20],
        "complete_and_consistent": ok,
        "wall_seconds": round(first_s, 2),
        "cells_per_second": round(a["cells"] / first_s, 2),
        "rerun_wall_seconds": round(again_s, 2),
        "sweep_summary": first_line,
        "rerun_summary": again_line,
    }


def format_result(r: dict[str, Any]) -> str:
    rows = r["rows"]
    return (f"{r['title']}: {r['wall_seconds']:.1f} s ({r['cells_per_second']:.1f} cells/s); "
            f"rows runs/evals/trials {rows['runs']}/{rows['evals']}/{rows['trials']} "
            f"(expected {r['expected_rows']['runs']}/{r['expected_rows']['evals']}/"
            f"{r['expected_rows']['trials']}); complete and consistent: "
            f"{r['complete_and_consistent']}; rerun (all complete) {r['rerun_wall_seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="24 cells")
    ap.add_argument("--out-json", type=Path, default=REPO / "docs" / "bench" / "load.json")
    args = ap.parse_args(argv)
    cells = 24 if args.quick else args.cells
    with tempfile.TemporaryDirectory(prefix="mcel-load-") as tmp:
        result = run(cells, args.jobs, Path(tmp))
    result["command"] = command_line()
    print(format_result(result))
    print(f"wrote {write_json(args.out_json, result)}")
    return 0 if result["complete_and_consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())

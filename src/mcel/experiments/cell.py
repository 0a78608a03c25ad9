"""One sweep cell, as a worker runs it: train (or resume) the run, take its clean output
margins, evaluate every missing number format. Every backend runs `try_cell`: it writes
nothing but the run folder and returns a `CellResult` for the parent to store, or, when
the cell raised, a `CellFailure` (the error as text) so that the other cells go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from mcel.experiments.grid import Cell


@dataclass
class CellJob:
    """What a backend runs: one cell, the formats still missing, and where to train."""

    cell: Cell
    run_dir: str
    fmts: tuple[str, ...]
    threads: int = 1


@dataclass
class CellResult:
    """What a cell returns to the parent (plain and picklable, for process pools and Ray):
    the run's id, config, clean accuracy, training time and clean output margins, the
    formats evaluated, one dict per evals row (its columns, plus the per-trial
    ``accuracies`` and ``empirical_rates``), the wall time and the torch thread count
    (CPU results depend on it: it is recorded with the versions)."""

    run_id: str
    config: dict[str, Any]
    clean_acc: float
    train_seconds: float | None
    margins: list[float]
    fmts: list[str]
    evals: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    threads: int = 1


@dataclass
class CellFailure:
    """A cell that raised, as plain text: its run id, its name (`Cell.label`), the error
    in one line, the full traceback and the seconds it ran.

    Text, not the exception, goes back to the parent: an exception that does not survive
    pickling (one with extra constructor arguments, or holding a lock) would otherwise
    break the process pool and lose every cell in flight.
    """

    run_id: str
    label: str
    error: str
    traceback: str
    seconds: float = 0.0


def one_line(err: BaseException) -> str:
    """``"TypeError: message"``, the message's first line; an `MCELError`'s message alone
    (it is written for the user)."""
    from mcel.errors import MCELError

    try:
        text = str(err).strip()
    except Exception:  # an exception whose __str__ raises still gets its name reported
        text = ""
    first = text.splitlines()[0] if text else ""
    if isinstance(err, MCELError) and first:
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def run_cell(job: CellJob) -> CellResult:
    """Train (or resume) one cell, take its margins, evaluate each missing format.

    Writes nothing but the run folder.
    """
    from mcel.analysis import output_margins
    from mcel.data import load_dataset
    from mcel.evaluate import evaluate
    from mcel.faults import parse_error_model
    from mcel.precision import cpu_threads
    from mcel.quant import set_format
    from mcel.train import train

    config, plan = job.cell.config, job.cell.plan
    t0 = time.perf_counter()
    with cpu_threads(job.threads):
        model, metrics = train(config, out=job.run_dir)
        x, y = load_dataset(config.dataset, "test", config.data_dir, limit=plan.limit_test)
        margins = output_margins(model, x, y)
        evals = []
        for fmt in job.fmts:
            set_format(model, fmt)  # same levels, other bit patterns: no retraining
            for spec in plan.error_models:
                res = evaluate(model, x, y, plan.bers, parse_error_model(spec),
                               trials=plan.trials, seed=plan.seed,
                               target_half_width=plan.target_half_width,
                               min_trials=plan.min_trials)
                for r in res.results:
                    evals.append({
                        "fmt": fmt, "error_model": spec, "ber": r.ber, "eval_seed": plan.seed,
                        "mean": r.mean, "std": r.std, "ci_low": r.ci_low, "ci_high": r.ci_high,
                        "trials": r.trials, "clean_acc": res.clean_accuracy,
                        "images": len(y), "plan": plan.settings(),
                        # one evaluate() call covers all BERs; share its time equally
                        "seconds": res.seconds / len(res.results),
                        "accuracies": list(r.accuracies),
                        "empirical_rates": list(r.empirical_rates),
                    })
    return CellResult(run_id=job.cell.run_id, config=config.to_dict(),
                      clean_acc=metrics["test_acc"], train_seconds=metrics.get("train_seconds"),
                      margins=[round(float(m), 4) for m in margins.tolist()],
                      fmts=list(job.fmts), evals=evals, seconds=time.perf_counter() - t0,
                      threads=job.threads)


def try_cell(job: CellJob) -> CellResult | CellFailure:
    """`run_cell`, with an ``Exception`` turned into a `CellFailure`, so that one failing
    cell does not end the sweep. An interrupt (``KeyboardInterrupt``) still propagates."""
    t0 = time.perf_counter()
    try:
        return run_cell(job)
    except Exception as e:
        return CellFailure(run_id=job.cell.run_id, label=job.cell.label, error=one_line(e),
                           traceback=traceback.format_exc(),
                           seconds=time.perf_counter() - t0)


__all__ = ["CellFailure", "CellJob", "CellResult", "one_line", "run_cell", "try_cell"]

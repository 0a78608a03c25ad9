"""Reading a results database for a report: its runs and evaluations (with their
trials) as `Run` and `Eval` records, and notes on rows that cannot be used. Opens the
file read-only through `mcel.experiments.store`, which owns the layout.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcel.config import weights_keys
from mcel.errors import MCELError
from mcel.experiments import store

# Keys that do not change what a run is (where data lives, which device ran it).
_NOT_A_VARIANT = ("seed",)  # besides data_dir, device and later keys at their defaults


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
        """Hash of the config without its seed: runs that differ only by seed share it
        (also when one was written before a key existed that the other holds at its
        default: `mcel.config.weights_keys`)."""
        d = {k: v for k, v in weights_keys(self.config).items() if k not in _NOT_A_VARIANT}
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
    images: int | None = None  # test images (NULL in rows written before it was recorded)
    accuracies: list[float] = field(default_factory=list)  # from the trials table


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


def read_runs(con: sqlite3.Connection) -> tuple[dict[str, Run], list[str]]:
    """(runs by run_id, notes about rows that could not be used) of an open database."""
    runs: dict[str, Run] = {}
    notes: list[str] = []
    for r in store.read_runs(con):
        config = _json(r["config"], None)
        if not isinstance(config, dict):
            notes.append(f"run {r['run_id']}: config is not a JSON object; left out")
            continue
        versions = _json(r["versions"], {})
        runs[r["run_id"]] = Run(r["run_id"], r["method"], config, r["clean_acc"],
                                r["train_seconds"], _margin_list(_json(r["margins"], None)),
                                versions if isinstance(versions, dict) else {}, r["grid"])
    return runs, notes


def load_runs(db_path: str | Path) -> tuple[dict[str, Run], list[str]]:
    """(runs by run_id, notes about rows that could not be used) of the database at
    ``db_path``; one MCELError line if it holds none."""
    con = store.open_readonly(db_path)
    try:
        runs, notes = read_runs(con)
    except sqlite3.DatabaseError as e:
        raise MCELError(f"cannot read {db_path}: {e}") from None
    finally:
        con.close()
    if not runs:
        raise MCELError(f"{db_path} holds no runs yet; fill it with a sweep first")
    return runs, notes


def load_results(db_path: str | Path | Sequence[str | Path],
                 ) -> tuple[dict[str, Run], list[Eval], list[str]]:
    """(runs by run_id, evals, notes about rows that could not be used) of one database
    or of several read as one study: a run id names the same training config in every
    database, so a run (and an evaluation with the same format, error model, BER and
    evaluation seed) found in more than one is taken from the first that has it, and
    runs from sister grids pair by seed."""
    if isinstance(db_path, (str, Path)):
        return _load_one(db_path)
    if not db_path:
        raise MCELError("no results database given; name one or more")
    runs: dict[str, Run] = {}
    evals: dict[tuple, Eval] = {}
    notes: list[str] = []
    for path in db_path:
        r, e, n = _load_one(path)
        notes += n
        for run_id, run in r.items():
            runs.setdefault(run_id, run)
        for ev in e:
            evals.setdefault(_eval_key(ev), ev)
    return runs, list(evals.values()), notes


def _eval_key(e: Eval) -> tuple:
    return (e.run_id, e.fmt, e.error_model, e.ber, e.eval_seed)


def _load_one(db_path: str | Path) -> tuple[dict[str, Run], list[Eval], list[str]]:
    con = store.open_readonly(db_path)
    try:
        runs, notes = read_runs(con)
        if not runs:
            raise MCELError(f"{db_path} holds no runs yet; fill it with a sweep first")
        evals: dict[int, Eval] = {}
        for r in store.read_evals(con):
            if r["run_id"] not in runs or r["mean"] is None:
                continue
            evals[r["eval_id"]] = Eval(r["eval_id"], r["run_id"], r["fmt"], r["error_model"],
                                       float(r["ber"]), r["eval_seed"], float(r["mean"]),
                                       r["ci_low"], r["ci_high"], r["trials"], r["clean_acc"],
                                       r["images"])
        for r in store.read_trials(con):
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


__all__ = ["Eval", "Run", "load_results", "load_runs", "read_runs"]

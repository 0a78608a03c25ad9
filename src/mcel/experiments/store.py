"""The results database: one SQLite file per study.

Tables (one row per ...):

* ``runs``   trained model (``run_id`` = hash of its TrainConfig), its config, clean
  accuracy, training time, method label and per-sample clean output margins;
* ``evals``  (run, number format, error model, BER, eval seed): mean accuracy,
  standard deviation, 95% interval, trial count;
* ``trials`` (eval, trial): accuracy and empirical bit error rate of each trial.

Every write of a cell happens in one transaction, and keys are unique, so a sweep
killed at any moment leaves complete rows or none, and a rerun never duplicates any.
"""

from __future__ import annotations

import json
import platform
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcel.errors import MCELError
from mcel.losses import DEFAULT_SCALE, default_margin

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    grid TEXT,
    method TEXT NOT NULL,
    config TEXT NOT NULL,
    clean_acc REAL,
    train_seconds REAL,
    margins TEXT,
    versions TEXT,
    created TEXT DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS evals (
    eval_id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    fmt TEXT NOT NULL,
    error_model TEXT NOT NULL,
    ber REAL NOT NULL,
    eval_seed INTEGER NOT NULL,
    mean REAL, std REAL, ci_low REAL, ci_high REAL,
    trials INTEGER, clean_acc REAL, seconds REAL,
    UNIQUE (run_id, fmt, error_model, ber, eval_seed)
);
CREATE TABLE IF NOT EXISTS trials (
    eval_id INTEGER NOT NULL REFERENCES evals(eval_id),
    trial INTEGER NOT NULL,
    accuracy REAL NOT NULL,
    empirical_rate REAL,
    PRIMARY KEY (eval_id, trial)
);
"""


def method_label(config: dict[str, Any]) -> str:
    """A short, stable name for the training method of a config.

    >>> method_label({"loss": "mcel", "margin": 2.0, "normalize": "std", "scale": 4.0})
    'MCEL(m=2, std, s=4)'
    >>> method_label({"loss": "ce", "train_ber": 0.01})
    'CE+EI(p=0.01)'
    >>> method_label({"loss": "mcel", "margin": 10.0, "clip": 0.1, "precision": "bf16"})
    'MCEL(m=10)+clip(0.1) [bf16]'

    A config without a margin is labelled with the margin its loss trains at
    (`mcel.losses.default_margin`).
    """
    loss = config.get("loss", "ce")
    m = config.get("margin")
    if m is None and loss in ("mcel", "mhl"):
        m = default_margin(loss)
    if loss == "mcel":
        norm = config.get("normalize", "none")
        tail = "" if norm == "none" else f", {norm}, s={config.get('scale', DEFAULT_SCALE):g}"
        label = f"MCEL(m={m:g}{tail})"
    elif loss == "mhl":
        label = f"MHL(b={m:g})"
    else:
        label = "CE"
    p = config.get("train_ber") or 0.0
    if p > 0:
        label += f"+EI(p={p:g})"
    elif config.get("train_error_model"):
        label += f"+EI({config['train_error_model']})"
    if config.get("clip") is not None:
        label += f"+clip({config['clip']:g})"
    if config.get("precision", "fp32") != "fp32":
        label += f" [{config['precision']}]"
    return label


def versions() -> dict[str, str]:
    import numpy
    import torch

    from mcel import __version__

    return {"mcel": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def connect(path: str | Path) -> sqlite3.Connection:
    """The results database at ``path``, created if need be; one MCELError line when the
    file is something else (not SQLite, damaged, a folder, not writable)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(path), timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.executescript(SCHEMA)
    except (sqlite3.DatabaseError, OSError) as e:  # OperationalError is a DatabaseError
        raise MCELError(f"cannot use {path} as a results database ({e}); give another "
                        "--out or move that file away") from None
    con.row_factory = sqlite3.Row
    return con


@contextmanager
def transaction(con: sqlite3.Connection):
    """All-or-nothing: a kill inside leaves the database as it was before."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def dumps(obj: Any) -> str:
    """Canonical JSON: the same object always gives the same key text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def settle(con: sqlite3.Connection) -> None:
    """Leave the database as one plain file: fold the write-ahead log back in and leave
    WAL mode, so the file can be copied alone and readers (`mcel report` opens it
    read-only) create no -wal/-shm files beside it. Another sweep still writing to it
    keeps WAL on (the switch needs the database to itself); the next sweep turns it on."""
    try:
        con.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.OperationalError:
        pass

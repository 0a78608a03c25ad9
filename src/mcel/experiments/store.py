"""The results database: one SQLite file per study.

Tables (one row per ...):

* ``runs``   trained model (``run_id`` = hash of its TrainConfig), its config, clean
  accuracy, training time, method label and per-sample clean output margins;
* ``evals``  (run, number format, error model, BER, eval seed): mean accuracy,
  standard deviation, 95% interval, trial count, test images and the eval plan it was
  made under (trials, adaptive target, min_trials, limit_test; NULL in rows written
  before mcel recorded them);
* ``trials`` (eval, trial): accuracy and empirical bit error rate of each trial.

Every write of a cell happens in one transaction, and keys are unique, so a sweep
killed at any moment leaves complete rows or none, and a rerun never duplicates any.

This module is the one place that knows the layout: sweeps write through `add_run` and
`add_eval`, and sweeps, audits, the sweep table and reports read through the functions
below (`read_runs`, `eval_keys`, `mean_accuracy`, ...); a new column is one edit here.
"""

from __future__ import annotations

import json
import platform
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

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
    images INTEGER, plan TEXT,
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
# columns added after the first release: connect() adds them to an older database
ADDED_COLUMNS = {"evals": (("images", "INTEGER"), ("plan", "TEXT"))}


def quant_label(config: dict[str, Any]) -> str:
    """The weight format of a config as reports group runs by it: the scheme, and the
    layers that differ from it (mixed precision, layers kept in float).

    >>> quant_label({"quant": "int4"})
    'int4'
    >>> quant_label({"quant": "int4", "quant_layers": {"features.0": "int8"},
    ...              "quant_exclude": ["fc"]})
    'int4 (features.0 int8, fc float)'
    """
    own = [f"{p} {w}" for p, w in (config.get("quant_layers") or {}).items()]
    own += [f"{p} float" for p in config.get("quant_exclude") or []]
    quant = str(config.get("quant", "?"))
    return f"{quant} ({', '.join(own)})" if own else quant


def method_label(config: dict[str, Any]) -> str:
    """A short, stable name for the training method of a config.

    >>> method_label({"loss": "mcel", "margin": 2.0, "normalize": "std", "scale": 4.0})
    'MCEL(m=2, std, s=4)'
    >>> method_label({"loss": "ce", "train_ber": 0.01})
    'CE+EI(p=0.01)'
    >>> method_label({"loss": "mcel", "margin": 10.0, "clip": 0.1, "precision": "bf16"})
    'MCEL(m=10)+clip(0.1) [bf16]'
    >>> method_label({"loss": "ce", "clip_rel": 1.0})
    'CE+clip(rel 1)'
    >>> method_label({"loss": "mcel", "margin": 30.0, "clip_auto": 2.0})
    'MCEL(m=30)+clip(auto 2)'
    >>> method_label({"loss": "mcel", "init": "nets/resnet.pt"})
    'MCEL(m=10)+init(resnet)'
    >>> method_label({"loss": "ce", "init": "nets/resnet.pt", "epochs": 0})
    'init(resnet)'

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
    if config.get("clip_rel") is not None:
        label += f"+clip(rel {config['clip_rel']:g})"
    if config.get("clip_auto") is not None:
        label += f"+clip(auto {config['clip_auto']:g})"
    if config.get("init"):  # weights from elsewhere; with 0 epochs the loss trained nothing
        start = f"init({Path(config['init']).stem})"
        label = start if config.get("epochs") == 0 else f"{label}+{start}"
    if config.get("precision", "fp32") != "fp32":
        label += f" [{config['precision']}]"
    return label


def versions() -> dict[str, Any]:
    import numpy
    import torch

    from mcel import __version__

    # CPU float sums depend on the thread count and on the vector unit torch's kernels use
    # (an AVX2 and an AVX-512 CPU train the same seed into other weights): both are part
    # of what reproduces a number
    return {"mcel": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "cpu": torch.backends.cpu.get_cpu_capability()}


def dumps(obj: Any) -> str:
    """Canonical JSON: the same object always gives the same key text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


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
        for table, cols in ADDED_COLUMNS.items():
            have = _columns(con, table)
            for name, kind in cols:
                if name not in have:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    except (sqlite3.DatabaseError, OSError) as e:  # OperationalError is a DatabaseError
        raise MCELError(f"cannot use {path} as a results database ({e}); give another "
                        "--out or move that file away") from None
    con.row_factory = sqlite3.Row
    return con


def open_readonly(db_path: str | Path) -> sqlite3.Connection:
    """The results database at ``db_path`` for reading only (a report never writes to the
    study), or one MCELError line: a folder, a missing file, not SQLite, not ours."""
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


def settle(con: sqlite3.Connection) -> None:
    """Leave the database as one plain file: fold the write-ahead log back in and leave
    WAL mode, so the file can be copied alone and readers (`mcel report` opens it
    read-only) create no -wal/-shm files beside it. Another sweep still writing to it
    keeps WAL on (the switch needs the database to itself); the next sweep turns it on."""
    try:
        con.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.OperationalError:
        pass


# -- writing: one cell of a sweep ------------------------------------------------------

def add_run(con: sqlite3.Connection, run: dict[str, Any]) -> int:
    """The runs row of ``run`` (keys as the columns); 0 where it is there already."""
    return con.execute(
        "INSERT OR IGNORE INTO runs (run_id, grid, method, config, clean_acc, "
        "train_seconds, margins, versions) VALUES (:run_id, :grid, :method, :config, "
        ":clean_acc, :train_seconds, :margins, :versions)", run).rowcount


def add_eval(con: sqlite3.Connection, run_id: str, ev: dict[str, Any]) -> int | None:
    """The evals row of ``ev`` and its trials rows; the new eval_id, or None where the
    row is there already (from an earlier plan: the first answer is kept)."""
    cur = con.execute(
        "INSERT OR IGNORE INTO evals (run_id, fmt, error_model, ber, eval_seed, mean, std, "
        "ci_low, ci_high, trials, clean_acc, seconds, images, plan) VALUES (?, ?, ?, ?, ?, "
        "?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, ev["fmt"], ev["error_model"], ev["ber"], ev["eval_seed"], ev["mean"],
         ev["std"], ev["ci_low"], ev["ci_high"], ev["trials"], ev["clean_acc"],
         ev["seconds"], ev.get("images"),
         None if ev.get("plan") is None else dumps(ev["plan"])))
    if cur.rowcount != 1:
        return None
    con.executemany(
        "INSERT INTO trials (eval_id, trial, accuracy, empirical_rate) VALUES (?, ?, ?, ?)",
        [(cur.lastrowid, t, a, r) for t, (a, r) in
         enumerate(zip(ev["accuracies"], ev["empirical_rates"], strict=True))])
    return cur.lastrowid


# -- reading ------------------------------------------------------------------------------


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def read_runs(con: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Every runs row, by run_id (``grid`` is NULL in databases older than that column)."""
    grid = "grid" if "grid" in _columns(con, "runs") else "NULL AS grid"
    yield from con.execute(f"SELECT run_id, method, config, clean_acc, train_seconds, margins, "
                           f"versions, {grid} FROM runs ORDER BY run_id")


def read_evals(con: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Every evals row, by eval_id (``clean_acc`` and ``images`` are NULL where older
    databases lack them)."""
    have = _columns(con, "evals")
    extra = ", ".join(c if c in have else f"NULL AS {c}" for c in ("clean_acc", "images"))
    yield from con.execute(f"SELECT eval_id, run_id, fmt, error_model, ber, eval_seed, mean, "
                           f"ci_low, ci_high, trials, {extra} FROM evals ORDER BY eval_id")


def read_trials(con: sqlite3.Connection) -> Iterator[sqlite3.Row]:
    """Every trial's accuracy, by eval_id and trial (none where there is no trials table)."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                   "name='trials'").fetchone():
        yield from con.execute("SELECT eval_id, accuracy FROM trials ORDER BY eval_id, trial")


def eval_keys(con: sqlite3.Connection, run_id: str) -> tuple[bool, set[tuple]]:
    """Whether ``run_id`` has its runs row, and the (fmt, error model, BER, eval seed) of
    its evals rows."""
    has_run = con.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    keys = {(r["fmt"], r["error_model"], r["ber"], r["eval_seed"]) for r in con.execute(
        "SELECT fmt, error_model, ber, eval_seed FROM evals WHERE run_id = ?", (run_id,))}
    return has_run is not None, keys


def eval_plans(con: sqlite3.Connection, run_id: str) -> set[tuple[str | None, int]]:
    """(eval plan as canonical JSON, trial count) of ``run_id``'s evals rows; the plan is
    None where not recorded (rows, or a database opened read-only, from before)."""
    plan = "plan" if "plan" in _columns(con, "evals") else "NULL AS plan"
    return {(r[0], r[1]) for r in con.execute(
        f"SELECT DISTINCT {plan}, trials FROM evals WHERE run_id = ?", (run_id,))}


def mean_accuracy(con: sqlite3.Connection, run_ids: list[str]) -> list[sqlite3.Row]:
    """Mean accuracy and clean accuracy of ``run_ids`` per (model, quant, method, fmt,
    error model, BER), with the number of runs averaged (``n``)."""
    marks = ",".join("?" * len(run_ids))
    return con.execute(
        "SELECT json_extract(r.config, '$.model') AS model, "
        "json_extract(r.config, '$.quant') AS quant, r.method, e.fmt, e.error_model, "
        "e.ber, AVG(e.mean) AS acc, COUNT(*) AS n, AVG(r.clean_acc) AS clean "
        f"FROM evals e JOIN runs r USING (run_id) WHERE r.run_id IN ({marks}) "
        "GROUP BY model, quant, r.method, e.fmt, e.error_model, e.ber "
        "ORDER BY model, quant, r.method, e.fmt, e.error_model, e.ber", run_ids).fetchall()


def run_ids(con: sqlite3.Connection) -> set[str]:
    return {r["run_id"] for r in con.execute("SELECT run_id FROM runs")}


def evals(con: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every evals row: its key, mean, trial count, clean accuracy and eval plan."""
    return con.execute("SELECT eval_id, run_id, fmt, error_model, ber, eval_seed, mean, "
                       "trials, clean_acc, plan FROM evals").fetchall()


def trial_groups(con: sqlite3.Connection) -> dict[int, sqlite3.Row]:
    """Per eval_id of the trials table: the row count ``n``, the lowest and highest trial
    number (``lo``, ``hi``) and how many trials flipped a bit (``flipped``)."""
    return {r["eval_id"]: r for r in con.execute(
        "SELECT eval_id, COUNT(*) AS n, MIN(trial) AS lo, MAX(trial) AS hi, "
        "SUM(empirical_rate > 0) AS flipped FROM trials GROUP BY eval_id")}


def count(con: sqlite3.Connection, table: str) -> int:
    if table not in ("runs", "evals", "trials"):
        raise ValueError(f"no table '{table}'")
    return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
